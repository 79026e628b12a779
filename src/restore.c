/*
 * restore.c - rebuild a domain from a migration stream, superpages first.
 *
 * Algorithm (see save.h for the contract):
 *
 *   region state   g1[pfn >> 18] = struct rs_1g {filled, holes}, flat
 *                  (8 bytes per 1G of the pfn limit, 2 MiB at most);
 *                  tab: hash of pfn >> 9 -> struct rs_2m {filled, holes,
 *                  fill/hole/data bits[512]}, created by the first
 *                  populating entry of the 2M region (chunks of 256); a
 *                  hole in a 2M region without state goes into hlog, a set
 *                  of pfns, not into region state.  So memory is O(stream
 *                  bytes), ~200 bytes per populated 2M region at most, and
 *                  a stream of XTAB entries one per 1G region costs 16
 *                  bytes per entry, not 4 KiB.
 *   budget         speculative extents only while tot_pages stays within
 *                  max_pages (or the machine); one trim of the unfilled
 *                  speculation when not even 4K fits (first_touch).
 *   first touch    a populating entry for an unmapped pfn allocates the
 *                  enclosing 1G extent if that 1G region has seen no hole,
 *                  else the 2M extent if that 2M region has seen no hole,
 *                  else a 4K page; the domain refuses blocks over its holes
 *                  and 4K-only ranges (-EINVAL) and -ENOMEM falls back.
 *                  (restore_opts.xen_2025_rule, for comparison: 2M only
 *                  when the record holds the region's 512 pfns in order
 *                  from its first (xen_whole_region), else 4K; no
 *                  speculation, no layout, no coalescing.)
 *   END            mapped pfns without a fill bit were allocated
 *                  speculatively: they are released (split along the path
 *                  only), then the p2m is coalesced.  Late configuration
 *                  (holes, 4K-only ranges, max_pages, PoD entries carried
 *                  only in HVM_CONTEXT) is applied and checked here.
 *
 * Live migration streams (restore_opts.live): the guest's memory map
 * changed while it was sent, so the last word about a pfn wins.  There XTAB
 * (and BROKEN) only says "not RAM now": it records no hole (a region
 * populated again may be one superpage again, and a later populating entry
 * is no conflict), and a filled pfn is unfilled and its frame freed once
 * the record's data is in (drop_pfns: runs of pfns in one
 * decrease_reservation, which splits one level at a time along the path).
 * PoD entries, target and cache, and the final max_gfn, come from
 * HVM_CONTEXT.
 *
 * Untrusted input: every length and count is bounded before the buffer it
 * sizes is allocated; every pfn is checked against the domain's limit for
 * the whole record before the record allocates anything; a populating
 * entry beyond max_pages is refused before it is allocated; at END every
 * count the stream states (tot_pages, max_pages, PoD entries) is checked
 * against what it carried (check_end).  One validator: every check is
 * made on the stream and the region state, identically in a dry run and a
 * restore; the domain's own refusals are a backstop, and a restore fails
 * where a dry run succeeded only for want of memory or tables.
 *
 * Invariants: rs_2m.filled == popcount(fill), rs_2m.holes == popcount(hole),
 * fill & hole == 0; rs_1g.filled is the sum of its 2M regions' filled,
 * rs_1g.holes > 0 iff a hole was named in the 1G region; a pfn
 * with a fill bit is mapped to RAM (real restore); the restored domain owns
 * exactly the frames its p2m maps.
 */
#include "pod.h"
#include "save.h"

#include "hash.h"

#include <endian.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#define REGION_1G (1ULL << PAGE_ORDER_1G)

struct rs_2m {
    uint16_t filled, holes;
    uint64_t fill[8];
    uint64_t hole[8];
    uint64_t data[8]; /* written from a data page (restore_opts.track_data) */
    uint64_t *term;   /* [512] digest terms, 0: none (restore_opts.digest) */
};

/* Per 1G region, flat (8 bytes per 1G of the pfn limit: 2 MiB at most). */
struct rs_1g {
    uint32_t filled; /* pfns filled in the region */
    uint32_t holes;  /* hole entries seen in it (> 0: a hole was seen) */
};

#define RS_SLAB 256

/* The 2M regions with state: open addressing on pfn >> 9, key + 1 (0: free). */
struct rs_slot {
    uint64_t key;
    struct rs_2m *s;
};

struct rctx {
    struct machine *m;
    const struct restore_opts *o;
    struct restore_result *res;
    struct stream_reader rd;
    struct domain *d;
    bool domain_made;
    bool cfg_at_create;     /* the domain was created with res->config */
    struct stream_config late; /* config from HVM_CONTEXT */
    bool have_late;
    gfn_t limit;            /* pfns must be below */
    bool limit_fixed;
    gfn_t max_seen;         /* 1 + highest pfn named */
    gfn_t max_filled;       /* 1 + highest pfn populated */
    struct rs_1g *g1;       /* [ntop] */
    uint64_t ntop;
    struct rs_slot *tab;    /* [tab_cap], tab_len used */
    size_t tab_cap, tab_len;
    struct rs_2m **slabs;   /* chunks of RS_SLAB 2M states */
    struct hv_arena arena;  /* the slabs and their term arrays (no 4 KiB first-touch faults) */
    size_t nslabs, slabs_cap, slab_left;
    uint64_t *hlog;         /* set of holes named in 2M regions without state */
    size_t nhlog, hlog_cap;
    uint64_t budget;        /* real restore: tot_pages may not exceed it (speculation included) */
    bool no_spec;           /* speculation was trimmed once: first touches are 4K from now on */
    uint64_t *pfns;         /* PAGE_DATA entry buffer */
    mfn_t *mfns;            /* machine frame of each entry (real restore) */
    size_t pfns_cap;
    uint64_t *pod;          /* PoD extent entries */
    size_t npod;
    uint64_t pod_target;
    uint64_t pod_cache;     /* HVCTX_POD_CACHE, when have_pod_cache */
    bool have_pod, have_pod_cache;
    gfn_t *drop;            /* live: pfns of this record to unpopulate */
    size_t ndrop, drop_cap;
    uint8_t scratch[PAGE_SIZE];
    uint8_t *bounce;        /* RESTORE_BOUNCE bytes, for copy_run's pwrite */
    uint64_t zero_hash;     /* restore_opts.digest: XXH3-64 of a zero page */
    bool seen_static_end, seen_page_data;
};

/* ---- errors ------------------------------------------------------------- */

#define FAIL(c, rc, at, ...) stream_reader_fail(&(c)->rd, (rc), (at), __VA_ARGS__)

/* ---- region state -------------------------------------------------------- */

static int state_init(struct rctx *c)
{
    c->ntop = (c->limit + REGION_1G - 1) >> PAGE_ORDER_1G;
    c->g1 = hv_calloc(c->ntop ? c->ntop : 1, sizeof(*c->g1));
    c->tab_cap = 64;
    c->tab = hv_calloc(c->tab_cap, sizeof(*c->tab));
    return c->g1 && c->tab ? 0 : -ENOMEM;
}

static void state_free(struct rctx *c)
{
    hv_arena_free(&c->arena); /* the slabs and their term arrays */
    free(c->slabs);
    c->slabs = NULL;
    c->nslabs = 0;
    free(c->tab);
    free(c->g1);
    free(c->hlog);
    c->tab = NULL;
    c->g1 = NULL;
    c->hlog = NULL;
}

/* The bookkeeping of one restore, all of it. */
static void rctx_free(struct rctx *c)
{
    state_free(c);
    free(c->pfns);
    free(c->mfns);
    free(c->pod);
    free(c->drop);
    free(c->bounce);
    free(c);
}

static struct rs_1g *node_1g(struct rctx *c, gfn_t pfn)
{
    uint64_t i = pfn >> PAGE_ORDER_1G;
    return c->g1 && i < c->ntop ? &c->g1[i] : NULL;
}

static size_t slot_of(const struct rs_slot *tab, size_t cap, uint64_t key)
{
    size_t i = (size_t)((key * 0x9E3779B97F4A7C15ULL) >> 20) & (cap - 1);
    while (tab[i].key && tab[i].key != key)
        i = (i + 1) & (cap - 1);
    return i;
}

static int tab_grow(struct rctx *c)
{
    size_t cap = c->tab_cap * 2;
    struct rs_slot *t = hv_calloc(cap, sizeof(*t));
    if (!t)
        return -ENOMEM;
    for (size_t i = 0; i < c->tab_cap; i++)
        if (c->tab[i].key)
            t[slot_of(t, cap, c->tab[i].key)] = c->tab[i];
    free(c->tab);
    c->tab = t;
    c->tab_cap = cap;
    return 0;
}

/* The state of pfn's 2M region: NULL when it has none (and !create, or
 * out of memory, or pfn beyond the limit). */
static struct rs_2m *node_2m(struct rctx *c, gfn_t pfn, bool create)
{
    if (!c->tab || (pfn >> PAGE_ORDER_1G) >= c->ntop)
        return NULL;
    uint64_t key = (pfn >> PAGE_ORDER_2M) + 1;
    size_t i = slot_of(c->tab, c->tab_cap, key);
    if (c->tab[i].key || !create)
        return c->tab[i].s;
    if (2 * (c->tab_len + 1) > c->tab_cap) {
        if (tab_grow(c) < 0)
            return NULL;
        i = slot_of(c->tab, c->tab_cap, key);
    }
    if (!c->slab_left) { /* 2M states come in chunks: no allocator overhead each */
        if (c->nslabs == c->slabs_cap) {
            size_t cap = c->slabs_cap ? 2 * c->slabs_cap : 16;
            struct rs_2m **l = realloc(c->slabs, cap * sizeof(*l));
            if (!l)
                return NULL;
            c->slabs = l;
            c->slabs_cap = cap;
        }
        struct rs_2m *chunk = hv_arena_alloc(&c->arena, RS_SLAB * sizeof(*chunk));
        if (!chunk)
            return NULL;
        c->slabs[c->nslabs++] = chunk;
        c->slab_left = RS_SLAB;
    }
    struct rs_2m *s = &c->slabs[c->nslabs - 1][RS_SLAB - c->slab_left--];
    c->tab[i] = (struct rs_slot){key, s};
    c->tab_len++;
    return s;
}

/*
 * Non-live: a hole named in a 2M region without state costs no region
 * state, only a slot in a set of pfns (open addressing on pfn + 1, at most
 * half full: 16 bytes or less per XTAB entry of 8 bytes), so that a stream
 * naming one hole per 1G region costs O(its size).  A populating entry for
 * a pfn in a 1G region where holes were seen looks itself up there.
 */
static size_t hslot(const uint64_t *k, size_t cap, uint64_t key)
{
    size_t i = (size_t)((key * 0x9E3779B97F4A7C15ULL) >> 17) & (cap - 1);
    while (k[i] && k[i] != key)
        i = (i + 1) & (cap - 1);
    return i;
}

static int hole_log(struct rctx *c, gfn_t pfn)
{
    if (2 * (c->nhlog + 1) > c->hlog_cap) {
        size_t cap = c->hlog_cap ? c->hlog_cap * 2 : 1024;
        uint64_t *k = hv_calloc(cap, sizeof(*k));
        if (!k)
            return -ENOMEM;
        for (size_t i = 0; i < c->hlog_cap; i++)
            if (c->hlog[i])
                k[hslot(k, cap, c->hlog[i])] = c->hlog[i];
        free(c->hlog);
        c->hlog = k;
        c->hlog_cap = cap;
    }
    size_t i = hslot(c->hlog, c->hlog_cap, pfn + 1);
    if (!c->hlog[i]) {
        c->hlog[i] = pfn + 1;
        c->nhlog++;
    }
    return 0;
}

static bool hole_logged(const struct rctx *c, gfn_t pfn)
{
    return c->nhlog && c->hlog[hslot(c->hlog, c->hlog_cap, pfn + 1)] == pfn + 1;
}

static bool bit(const uint64_t *b, gfn_t pfn)
{
    unsigned i = (unsigned)pfn & 511;
    return b[i / 64] >> (i % 64) & 1;
}
static void set_bit(uint64_t *b, gfn_t pfn)
{
    unsigned i = (unsigned)pfn & 511;
    b[i / 64] |= 1ULL << (i % 64);
}
static void clear_bit(uint64_t *b, gfn_t pfn)
{
    unsigned i = (unsigned)pfn & 511;
    b[i / 64] &= ~(1ULL << (i % 64));
}

/*
 * The memory digest (restore_opts.digest, stream.h): pfn's term becomes
 * `term` (0: none).  res->digest is the sum of the terms of the filled
 * pfns, res->digest_pages their count.  A region's terms are allocated
 * with its first term: 4 KiB per populated 2M region, 0.2% of the guest.
 */
static int digest_set(struct rctx *c, struct rs_2m *s, gfn_t pfn, uint64_t term)
{
    if (!s->term && !term)
        return 0;
    if (!s->term && !(s->term = hv_arena_alloc(&c->arena, 512 * sizeof(*s->term))))
        return FAIL(c, -ENOMEM, UINT64_MAX, "out of memory for the digest terms");
    uint64_t old = s->term[pfn & 511];
    c->res->digest += term - old;
    c->res->digest_pages += (uint64_t)(term != 0) - (uint64_t)(old != 0);
    s->term[pfn & 511] = term;
    return 0;
}

/* Live: a filled pfn is no longer RAM; it is forgotten. */
static void unfill(struct rctx *c, struct rs_2m *s, struct rs_1g *g, gfn_t pfn)
{
    (void)digest_set(c, s, pfn, 0); /* (removing a term allocates nothing) */
    clear_bit(s->fill, pfn);
    s->filled--;
    g->filled--;
    c->res->pages_populated--;
}

/* ---- configuration --------------------------------------------------------- */

/* Decode and validate a hugevm context blob's CONFIG and POD TLVs.  Other
 * TLVs are kept for the caller when `keep` (HVM_CONTEXT).  rc < 0 means the
 * blob is corrupt (message already set). */
static int parse_blob(struct rctx *c, const uint8_t *blob, size_t len,
                      struct stream_config *cfg, bool *have_cfg, bool keep)
{
    size_t pos = 0;
    struct hvctx_tlv t;
    const uint8_t *v;
    int rc;
    if (keep && c->o->live) {
        /* Live: HV_CONFIG described the guest when the migration started;
         * HVM_CONTEXT describes it at pause time, PoD entries included (an
         * absent POD TLV means none are left). */
        free(c->pod);
        c->pod = NULL;
        c->npod = 0;
        c->pod_target = 0;
        c->have_pod = c->have_pod_cache = false;
    }
    while ((rc = hvctx_next(blob, len, &pos, &t, &v)) == 1) {
        uint64_t at = c->rd.rec_offset + 8 + sizeof(struct hvctx_header) + pos -
                      ((t.length + 7u) & ~7u) - sizeof(t);
        if (t.type == HVCTX_CONFIG) {
            struct hvctx_config w;
            if (t.length < sizeof(w))
                return FAIL(c, -EBADMSG, at, "hugevm CONFIG TLV too short (%u bytes)", t.length);
            memcpy(&w, v, sizeof(w));
            memset(cfg, 0, sizeof(*cfg));
            cfg->max_pages = le64toh(w.max_pages);
            cfg->max_gfn = le64toh(w.max_gfn);
            cfg->mmio_hole_bytes = le64toh(w.mmio_hole_bytes);
            cfg->tot_pages = le64toh(w.tot_pages);
            cfg->vga_hole = le32toh(w.flags) & HVCTX_CFG_VGA_HOLE;
            uint32_t n = le32toh(w.nr_4k_ranges);
            if (n > DOMAIN_MAX_4K_RANGES || t.length != sizeof(w) + 16ULL * n)
                return FAIL(c, -EBADMSG, at, "hugevm CONFIG TLV: %u 4K-only ranges in %u bytes",
                            n, t.length);
            if (cfg->max_gfn > P2M_GFN_LIMIT || cfg->max_pages == 0 ||
                cfg->mmio_hole_bytes % (2 * MiB) || cfg->mmio_hole_bytes > 4 * GiB ||
                cfg->tot_pages > cfg->max_pages || (le32toh(w.flags) & ~HVCTX_CFG_VGA_HOLE))
                return FAIL(c, -EBADMSG, at, "hugevm CONFIG TLV: implausible configuration "
                            "(max_gfn %#llx, max_pages %llu, mmio hole %llu bytes)",
                            (unsigned long long)cfg->max_gfn,
                            (unsigned long long)cfg->max_pages,
                            (unsigned long long)cfg->mmio_hole_bytes);
            cfg->nr_4k_ranges = n;
            for (uint32_t i = 0; i < n; i++) {
                uint64_t r[2];
                memcpy(r, v + sizeof(w) + 16 * i, 16);
                gfn_t g = le64toh(r[0]);
                uint64_t nr = le64toh(r[1]);
                if (nr == 0 || g >= P2M_GFN_LIMIT || nr > P2M_GFN_LIMIT - g)
                    return FAIL(c, -EBADMSG, at, "hugevm CONFIG TLV: bad 4K-only range %u", i);
                cfg->ranges_4k[i] = (struct gfn_range){g, nr};
            }
            *have_cfg = true;
        } else if (t.type == HVCTX_POD) {
            uint32_t hdr[2];
            uint64_t target;
            if (t.length < 16)
                return FAIL(c, -EBADMSG, at, "hugevm POD TLV too short");
            memcpy(hdr, v, 8);
            memcpy(&target, v + 8, 8);
            uint32_t n = le32toh(hdr[0]);
            if (t.length != 16 + 8ULL * n)
                return FAIL(c, -EBADMSG, at, "hugevm POD TLV: %u entries in %u bytes", n,
                            t.length);
            if (c->have_pod) /* HV_CONFIG and HVM_CONTEXT both carry it: keep the first */
                continue;
            if (n) {
                c->pod = hv_malloc(8ULL * n);
                if (!c->pod)
                    return FAIL(c, -ENOMEM, UINT64_MAX, "out of memory for %u PoD entries", n);
                for (uint32_t i = 0; i < n; i++) {
                    uint64_t x;
                    memcpy(&x, v + 16 + 8 * i, 8);
                    c->pod[i] = le64toh(x);
                }
            }
            c->npod = n;
            c->pod_target = le64toh(target);
            c->have_pod = true;
        } else if (t.type == HVCTX_POD_CACHE) {
            uint64_t cache;
            if (t.length != 8)
                return FAIL(c, -EBADMSG, at, "hugevm POD_CACHE TLV of %u bytes, want 8",
                            t.length);
            if (c->have_pod_cache) /* as POD: the first one counts */
                continue;
            memcpy(&cache, v, 8);
            c->pod_cache = le64toh(cache);
            c->have_pod_cache = true;
        } else if (t.flags & HVCTX_F_CRITICAL) {
            if (!keep)
                return FAIL(c, -EBADMSG, at, "unknown critical hugevm TLV type %u", t.type);
        }
    }
    if (rc < 0)
        return FAIL(c, -EBADMSG, UINT64_MAX, "hugevm context: a TLV overruns the blob");
    if (keep) {
        size_t area = len - sizeof(struct hvctx_header);
        free(c->res->context);
        c->res->context = NULL;
        c->res->context_len = 0;
        if (area) {
            c->res->context = hv_malloc(area);
            if (!c->res->context)
                return FAIL(c, -ENOMEM, UINT64_MAX, "out of memory for the context");
            memcpy(c->res->context, blob + sizeof(struct hvctx_header), area);
            c->res->context_len = area;
        }
    }
    return 0;
}

static bool cfg_equal(const struct stream_config *a, const struct stream_config *b)
{
    if (a->max_pages != b->max_pages || a->max_gfn != b->max_gfn ||
        a->mmio_hole_bytes != b->mmio_hole_bytes || a->vga_hole != b->vga_hole ||
        a->nr_4k_ranges != b->nr_4k_ranges)
        return false;
    for (unsigned i = 0; i < a->nr_4k_ranges; i++)
        if (a->ranges_4k[i].gfn != b->ranges_4k[i].gfn || a->ranges_4k[i].nr != b->ranges_4k[i].nr)
            return false;
    return true;
}

/* Read a whole (bounded) body into a fresh buffer. */
static int read_whole(struct rctx *c, uint8_t **out)
{
    *out = NULL;
    if (!c->rd.length)
        return 0;
    uint8_t *b = hv_malloc(c->rd.length);
    if (!b)
        return FAIL(c, -ENOMEM, UINT64_MAX, "out of memory for a %u-byte body", c->rd.length);
    int rc = stream_read_body(&c->rd, b, c->rd.length);
    if (rc < 0) {
        free(b);
        return rc;
    }
    *out = b;
    return 0;
}

/* ---- the domain ------------------------------------------------------------- */

/* Fix the pfn limit (no allocation): the configuration's max_gfn when it
 * came before the page data, else the caller's, else the p2m's. */
static void fix_limit(struct rctx *c)
{
    if (c->limit_fixed)
        return;
    c->limit_fixed = true;
    if (c->res->have_config && !c->o->live)
        c->limit = c->res->config.max_gfn;
    else if (c->res->have_config) /* live: RAM may be populated above it meanwhile */
        c->limit = P2M_GFN_LIMIT; /* (checked against HVM_CONTEXT's max_gfn at END) */
    else
        c->limit = c->o->max_gfn && c->o->max_gfn < P2M_GFN_LIMIT ? c->o->max_gfn
                                                                    : P2M_GFN_LIMIT;
}

static int make_domain(struct rctx *c)
{
    if (c->domain_made)
        return 0;
    c->domain_made = true;
    struct restore_result *res = c->res;
    fix_limit(c);
    int rc = state_init(c);
    if (rc < 0)
        return FAIL(c, rc, UINT64_MAX, "out of memory for the region state");
    if (c->o->dry_run) {
        c->cfg_at_create = res->have_config;
        return 0;
    }
    struct domain_config dc;
    domain_config_default(&dc);
    dc.max_pages = 0; /* speculative allocations may exceed it until END */
    if (res->have_config) {
        dc.mmio_hole_bytes = res->config.mmio_hole_bytes;
        dc.no_vga_hole = !res->config.vga_hole;
        dc.nr_4k_ranges = res->config.nr_4k_ranges;
        memcpy(dc.ranges_4k, res->config.ranges_4k, sizeof(dc.ranges_4k));
        c->cfg_at_create = true;
    } else {
        /* A foreign stream: its XTAB entries say where the holes are. */
        dc.mmio_hole_bytes = 0;
        dc.no_vga_hole = true;
    }
    rc = domain_create(c->m, &dc, &c->d);
    if (rc < 0)
        return FAIL(c, rc, UINT64_MAX, "cannot create the domain: %s", strerror(-rc));
    res->domid = c->d->domid;
    if (c->o->xen_2025_rule) {
        /* Xen's p2m never merges 4K into 2M or 2M into 1G: neither does
         * this domain's, after the restore too (log-dirty switched off
         * later would turn merging on again, as it does for any domain). */
        c->d->no_auto_coalesce = true;
        p2m_set_auto_coalesce(c->d->p2m, false);
    }
    /* Speculation may exceed neither the configuration's max_pages nor
     * the machine (a live stream's guest may hold more RAM for a while). */
    c->budget = c->d->max_pages;
    if (res->have_config && !c->o->live && res->config.max_pages < c->budget)
        c->budget = res->config.max_pages;
    return 0;
}

static int free_unfilled(struct rctx *c);

/*
 * Map one extent for a first touch at pfn; returns 0 and *mfn of pfn.
 *
 * Speculation is bounded: an extent is tried only while the domain's
 * tot_pages stays within c->budget (max_pages of the configuration, or
 * the machine).  When not even the 4K page fits, the unfilled pages of
 * every speculative extent are given back once (free_unfilled, as at END)
 * and first touches are 4K from then on: so a sparse stream costs at most
 * max_pages frames at any time, and trimming costs one walk of the p2m.
 */
static int first_touch(struct rctx *c, gfn_t pfn, bool xen_run, mfn_t *mfn)
{
    struct rs_1g *g1 = node_1g(c, pfn);
    struct rs_2m *g2 = node_2m(c, pfn, false);
    static const unsigned orders[] = {PAGE_ORDER_1G, PAGE_ORDER_2M};
    if (c->o->xen_2025_rule) {
        /* Xen's rule: 2M for a whole region in one record, else 4K. */
        gfn_t base = pfn & ~(gfn_t)511;
        if (xen_run && base + 512 <= c->limit && c->d->tot_pages + 512 <= c->budget) {
            mfn_t m0;
            int rc = domain_map_extent(c->d, base, PAGE_ORDER_2M, &m0);
            if (rc == 0) {
                c->res->spec_2m++;
                *mfn = m0 + (pfn - base);
                return 0;
            }
            if (rc == -ENOMEM)
                c->res->fallback_nomem++;
            else if (rc != -EINVAL && rc != -EEXIST && rc != -EDQUOT)
                return rc;
        }
        if (c->d->tot_pages + 1 > c->budget)
            return -EDQUOT;
        int rc = domain_map_extent(c->d, pfn, PAGE_ORDER_4K, mfn);
        if (rc == 0)
            c->res->alloc_4k++;
        return rc;
    }
    for (size_t i = 0; !c->no_spec && i < ARRAY_SIZE(orders); i++) {
        unsigned o = orders[i];
        gfn_t base = pfn & ~(order_pages(o) - 1);
        bool holes = o == PAGE_ORDER_1G ? g1 && g1->holes : g2 && g2->holes;
        if (holes || base + order_pages(o) > c->limit ||
            c->d->tot_pages + order_pages(o) > c->budget)
            continue;
        mfn_t m0;
        int rc = domain_map_extent(c->d, base, o, &m0);
        if (rc == 0) {
            if (o == PAGE_ORDER_1G)
                c->res->spec_1g++;
            else
                c->res->spec_2m++;
            *mfn = m0 + (pfn - base);
            return 0;
        }
        if (rc == -ENOMEM)
            c->res->fallback_nomem++;
        else if (rc != -EINVAL && rc != -EEXIST && rc != -EDQUOT)
            return rc;
    }
    if (c->d->tot_pages + 1 > c->budget) {
        if (c->no_spec)
            return -EDQUOT;
        int rc = free_unfilled(c);
        if (rc < 0)
            return rc;
        c->no_spec = true;
        c->res->spec_trims++;
        if (c->d->tot_pages + 1 > c->budget)
            return -EDQUOT;
    }
    int rc = domain_map_extent(c->d, pfn, PAGE_ORDER_4K, mfn);
    if (rc == 0)
        c->res->alloc_4k++;
    return rc;
}

static bool cfg_in_hole(const struct stream_config *cfg, gfn_t g)
{
    if (cfg->vga_hole && g >= VGA_HOLE_GFN && g < VGA_HOLE_GFN + VGA_HOLE_NR)
        return true;
    return g < GFN_4G && g >= GFN_4G - (cfg->mmio_hole_bytes >> PAGE_SHIFT);
}

/* ---- PAGE_DATA ------------------------------------------------------------------ */

static bool is_populating(unsigned t) { return t == STREAM_PAGE_NOTAB || t == STREAM_PAGE_XALLOC; }

#define MFN_REFILL (1ULL << 63) /* in c->mfns: the pfn had been filled before */
#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23
#endif

/* Data pages go through a bounce buffer of this size when they are
 * written to the memfd with pwrite (see copy_run). */
#define RESTORE_BOUNCE (256u << 10)

/* Received pages are hashed for the digest in pieces of this many pages,
 * right after each lands, while it is in the cache; pages the source
 * hashed as they arrived (a migration's, stream_io.page_hash) are read in
 * pieces of RESTORE_PIECE_HASHED, fewer and larger reads (migrate.c,
 * RX_HASH_PIECE). */
#define RESTORE_HASH_PAGES 16u
#define RESTORE_PIECE_HASHED 256u

/* The digest terms of n data pages at p (the entries ents[0..n) of this
 * record), just read (the last n pages before c->rd.offset), for the pfns
 * still filled after the record's entries (a pfn whose last entry in the
 * record is a hole has no term).  A page the source hashed as it arrived
 * (migration's frames) is not hashed again. */
static int digest_pages(struct rctx *c, const uint64_t *ents, const uint8_t *p, uint32_t n,
                        uint32_t *own)
{
    uint64_t off0 = c->rd.offset - ((uint64_t)n << PAGE_SHIFT);
    for (uint32_t k = 0; k < n; k++) {
        gfn_t pfn = stream_entry_pfn(ents[k]);
        struct rs_2m *s = node_2m(c, pfn, false);
        if (!s || !bit(s->fill, pfn))
            continue;
        bool here = false;
        uint64_t h = stream_page_hash(&c->rd, off0 + ((uint64_t)k << PAGE_SHIFT),
                                      p + ((size_t)k << PAGE_SHIFT), &here);
        *own += here;
        int rc = digest_set(c, s, pfn, stream_digest_term(pfn, h));
        if (rc < 0)
            return rc;
    }
    return 0;
}

/*
 * Copy the next n data pages of the record to machine frames [mfn, mfn+n)
 * (their entries: ents[0..n)), hashing each for the digest.
 *
 * Without shmem THP each fresh 4K frame costs a shmem allocation, and
 * touching it through the mapping adds a page fault that zeroes it only to
 * have it overwritten.  pwrite to the memfd allocates the page-cache pages
 * and copies into them without zeroing or mapping them (measured ~1.5x
 * MADV_POPULATE_WRITE + memcpy); a later access maps them with a minor
 * fault.  With shmem THP usable, a write() would get 4K pages (the
 * MADV_HUGEPAGE advice lives on the mapping), so the run is faulted in
 * through the mapping with one MADV_POPULATE_WRITE (2M folios) and read
 * straight into it.  Single pages are read into the mapping either way
 * (a refilled page is already there), and so is everything on a resident
 * machine, whose frames are mapped already: restore is then one copy from
 * the source into guest memory.
 */
static int copy_run(struct rctx *c, mfn_t mfn, uint32_t n, const uint64_t *ents)
{
    size_t len = (size_t)n << PAGE_SHIFT;
    uint8_t *dst = machine_ptr(c->m, mfn);
    if (n == 1 || c->m->resident || thp_shmem_usable(c->m->thp)) {
        if (n > 1 && !c->m->resident) /* best effort: a failure only means page faults later */
            (void)madvise(dst, len, MADV_POPULATE_WRITE);
        if (!c->o->digest)
            return stream_read_body(&c->rd, dst, len);
        /* pieces of RESTORE_HASH_PAGES, each hashed as it lands (in cache),
         * or of RESTORE_PIECE_HASHED while the source hashes most pages
         * (not a compressed migration's: its frames carry no page table) */
        uint32_t piece = c->rd.io->page_hash ? RESTORE_PIECE_HASHED : RESTORE_HASH_PAGES;
        for (uint32_t k = 0; k < n;) {
            uint32_t m = n - k < piece ? n - k : piece, own = 0;
            int rc = stream_read_body(&c->rd, dst + ((size_t)k << PAGE_SHIFT),
                                      (size_t)m << PAGE_SHIFT);
            if (rc == 0)
                rc = digest_pages(c, ents + k, dst + ((size_t)k << PAGE_SHIFT), m, &own);
            if (c->rd.io->page_hash)
                piece = 2 * own > m ? RESTORE_HASH_PAGES : RESTORE_PIECE_HASHED;
            if (rc < 0)
                return rc;
            k += m;
        }
        return 0;
    }
    if (!c->bounce) {
        c->bounce = hv_malloc(RESTORE_BOUNCE);
        if (!c->bounce)
            return FAIL(c, -ENOMEM, UINT64_MAX, "out of memory for the copy buffer");
    }
    uint64_t off = machine_offset(mfn);
    while (len) {
        size_t k = len < RESTORE_BOUNCE ? len : RESTORE_BOUNCE;
        int rc = stream_read_body(&c->rd, c->bounce, k);
        uint32_t own = 0;
        if (rc == 0 && c->o->digest)
            rc = digest_pages(c, ents + ((size_t)n - (len >> PAGE_SHIFT)), c->bounce,
                              (uint32_t)(k >> PAGE_SHIFT), &own);
        if (rc < 0)
            return rc;
        for (size_t done = 0; done < k;) {
            ssize_t w = pwrite(c->m->fd, c->bounce + done, k - done, (off_t)(off + done));
            if (w < 0 && errno == EINTR)
                continue;
            if (w <= 0) {
                int e = w < 0 ? errno : EIO;
                return FAIL(c, -e, c->rd.offset - k + done,
                            "writing page data to machine frame %#llx: %s",
                            (unsigned long long)((off + done) >> PAGE_SHIFT), strerror(e));
            }
            done += (size_t)w;
        }
        off += k;
        len -= k;
    }
    return 0;
}

/*
 * Live: free the frames of the pfns this record turned from populated into
 * holes, after its data went in (an entry earlier in the record may have
 * written to one of them).  A pfn populated again later in the same record
 * keeps its frame.  Runs of pfns go in one decrease_reservation, which
 * splits a superpage one level at a time along the path only and frees a
 * whole leaf without splitting it.
 */
static int drop_pfns(struct rctx *c)
{
    size_t n = 0;
    for (size_t i = 0; i < c->ndrop; i++) {
        gfn_t pfn = c->drop[i];
        struct rs_2m *s = node_2m(c, pfn, false);
        enum p2m_type t;
        p2m_get_entry(c->d->p2m, pfn, &t, NULL);
        if (!bit(s->fill, pfn) && p2m_is_ram(t))
            c->drop[n++] = pfn;
    }
    for (size_t i = 0; i < n;) {
        size_t k = 1;
        while (i + k < n && c->drop[i + k] == c->drop[i] + k)
            k++;
        long rel = domain_decrease_reservation(c->d, c->drop[i], k);
        if (rel < 0)
            return FAIL(c, (int)rel, UINT64_MAX, "freeing pfn %#llx (sent as a hole after it "
                        "was populated): %s", (unsigned long long)c->drop[i],
                        strerror((int)-rel));
        i += k;
    }
    c->ndrop = 0;
    return 0;
}

/* Xen's 2025 rule: entries [i, i + 512) of the record are populating
 * entries for the 512 pfns of one 2M region, in ascending order from its
 * first pfn.  (The runs this checks from aligned pfns are disjoint, so a
 * record costs O(count) however it is built.) */
static bool xen_whole_region(const uint64_t *ents, uint32_t i, uint32_t count)
{
    gfn_t base = stream_entry_pfn(ents[i]);
    if ((base & 511) || count - i < 512)
        return false;
    for (uint32_t k = 0; k < 512; k++)
        if (!is_populating(stream_entry_type(ents[i + k])) ||
            stream_entry_pfn(ents[i + k]) != base + k)
            return false;
    return true;
}

static int page_data(struct rctx *c)
{
    struct stream_reader *r = &c->rd;
    struct restore_result *res = c->res;
    struct stream_page_data_header h;
    uint64_t body = r->rec_offset + 8;
    int rc;
    if (c->rd.version == 3 && !c->seen_static_end)
        return FAIL(c, -EBADMSG, UINT64_MAX, "PAGE_DATA before STATIC_DATA_END (v3 stream)");
    if (r->length < sizeof(h))
        return FAIL(c, -EBADMSG, body, "body of %u bytes is shorter than its header", r->length);
    rc = stream_read_body(r, &h, sizeof(h));
    if (rc < 0)
        return rc;
    uint32_t count = le32toh(h.count);
    if (count == 0)
        return FAIL(c, -EBADMSG, body, "count is 0");
    if (8ULL * count > r->length - sizeof(h))
        return FAIL(c, -EBADMSG, body, "count %u needs %llu bytes of pfns, body has %u", count,
                    8ULL * count + 8, r->length);
    fix_limit(c);
    if (count > c->pfns_cap) {
        free(c->pfns);
        free(c->mfns);
        c->pfns_cap = 0;
        c->pfns = hv_malloc(8ULL * count);
        c->mfns = hv_malloc(sizeof(mfn_t) * count);
        if (!c->pfns || !c->mfns)
            return FAIL(c, -ENOMEM, UINT64_MAX, "out of memory for %u pfns", count);
        c->pfns_cap = count;
    }
    rc = stream_read_body(r, c->pfns, 8ULL * count);
    if (rc < 0)
        return rc;
    /* Validate the whole record before anything is allocated for it. */
    uint64_t ndata = 0;
    for (uint32_t i = 0; i < count; i++) {
        uint64_t e = le64toh(c->pfns[i]);
        c->pfns[i] = e;
        uint64_t at = body + 8 + 8ULL * i;
        unsigned t = stream_entry_type(e);
        gfn_t pfn = stream_entry_pfn(e);
        if (e & STREAM_PFN_RESERVED_MASK)
            return FAIL(c, -EBADMSG, at, "pfn entry %u: reserved bits set (%#llx)", i,
                        (unsigned long long)e);
        if (t != STREAM_PAGE_NOTAB && t != STREAM_PAGE_XALLOC && t != STREAM_PAGE_XTAB &&
            t != STREAM_PAGE_BROKEN)
            return FAIL(c, -EBADMSG, at, "pfn entry %u: page type %#x is not valid for an "
                        "x86 HVM stream", i, t);
        if (pfn >= c->limit)
            return FAIL(c, -ERANGE, at, "pfn %#llx is beyond the domain (limit %#llx)",
                        (unsigned long long)pfn, (unsigned long long)c->limit);
        ndata += t == STREAM_PAGE_NOTAB;
    }
    uint64_t want = 8 + 8ULL * count + PAGE_SIZE * ndata;
    if (want != r->length)
        return FAIL(c, -EBADMSG, body, "%u pfns with %llu data pages need %llu bytes, body has %u",
                    count, (unsigned long long)ndata, (unsigned long long)want, r->length);
    rc = make_domain(c);
    if (rc < 0)
        return rc;
    c->seen_page_data = true;
    res->page_data_records++;
    if (c->o->live) {
        c->ndrop = 0;
        if (count > c->drop_cap) {
            free(c->drop);
            c->drop_cap = 0;
            c->drop = hv_malloc(sizeof(*c->drop) * count);
            if (!c->drop)
                return FAIL(c, -ENOMEM, UINT64_MAX, "out of memory for %u pfns", count);
            c->drop_cap = count;
        }
    }

    gfn_t prev = INVALID_GFN;
    uint64_t run = 0; /* Xen 2025 rule: consecutive populated pfns in this record */
    uint32_t xen_run_end = 0; /* restore_opts.xen_2025_rule: entries below are a whole 2M */
    for (uint32_t i = 0; i < count; i++) {
        uint64_t at = body + 8 + 8ULL * i;
        unsigned t = stream_entry_type(c->pfns[i]);
        gfn_t pfn = stream_entry_pfn(c->pfns[i]);
        struct rs_1g *g = node_1g(c, pfn);
        if (pfn + 1 > c->max_seen)
            c->max_seen = pfn + 1;
        if (!is_populating(t)) {
            /* A hole costs region state only where the region has some
             * already: elsewhere it is logged (non-live) or nothing. */
            struct rs_2m *s = node_2m(c, pfn, false);
            run = 0;
            prev = pfn;
            if (s && bit(s->fill, pfn) && !c->o->live)
                return FAIL(c, -EEXIST, at, "conflicting duplicate: pfn %#llx was populated "
                            "earlier and is now a hole", (unsigned long long)pfn);
            if (t == STREAM_PAGE_XTAB)
                res->pages_xtab++;
            else
                res->pages_broken++;
            if (c->o->live) {
                /* "not RAM now" (ballooned, or a PoD entry again): a filled
                 * pfn is forgotten and its frame freed after this record's
                 * data (drop_pfns).  No hole is recorded: a region
                 * populated again may be one superpage again. */
                if (s && bit(s->fill, pfn)) {
                    unfill(c, s, g, pfn);
                    res->pages_dropped++;
                    if (!c->o->dry_run)
                        c->drop[c->ndrop++] = pfn;
                }
                continue;
            }
            if (!s) {
                if (hole_log(c, pfn) < 0)
                    return FAIL(c, -ENOMEM, UINT64_MAX, "out of memory for the hole log");
                g->holes++;
            } else if (!bit(s->hole, pfn)) {
                set_bit(s->hole, pfn);
                s->holes++;
                g->holes++;
            }
            continue;
        }
        struct rs_2m *s = node_2m(c, pfn, true);
        if (!s)
            return FAIL(c, -ENOMEM, UINT64_MAX, "out of memory for the region state");
        if (c->o->xen_2025_rule && i >= xen_run_end && xen_whole_region(c->pfns, i, count))
            xen_run_end = i + 512;
        run = (run && pfn == prev + 1) ? run + 1 : 1;
        prev = pfn;
        if (run >= 512 && ((pfn + 1) & 511) == 0)
            res->xen_2m++;
        if (bit(s->hole, pfn) || (g->holes && hole_logged(c, pfn))) /* (never in a live stream) */
            return FAIL(c, -EEXIST, at, "conflicting duplicate: pfn %#llx was a hole earlier "
                        "and is now populated", (unsigned long long)pfn);
        bool refill = bit(s->fill, pfn);
        mfn_t mfn = INVALID_MFN;
        if (c->cfg_at_create && cfg_in_hole(&res->config, pfn))
            return FAIL(c, -EINVAL, at, "pfn %#llx lies in a hole of the domain",
                        (unsigned long long)pfn);
        /* Never more RAM than the configuration allows (a live stream may
         * hold more for a while: pages dropped later; END checks it). */
        if (!refill && c->cfg_at_create && !c->o->live &&
            res->pages_populated + 1 > res->config.max_pages)
            return FAIL(c, -EDQUOT, at, "pfn %#llx: the stream populates more than max_pages "
                        "(%llu) pages", (unsigned long long)pfn,
                        (unsigned long long)res->config.max_pages);
        if (!c->o->dry_run) {
            enum p2m_type pt;
            mfn = p2m_get_entry(c->d->p2m, pfn, &pt, NULL);
            if (!p2m_is_ram(pt)) {
                rc = first_touch(c, pfn, i < xen_run_end, &mfn);
                if (rc == -EINVAL)
                    return FAIL(c, rc, at, "pfn %#llx lies in a hole of the domain",
                                (unsigned long long)pfn);
                if (rc < 0)
                    return FAIL(c, rc, at, "allocating pfn %#llx: %s", (unsigned long long)pfn,
                                strerror(-rc));
            }
        }
        c->mfns[i] = mfn | (refill ? MFN_REFILL : 0);
        if (t == STREAM_PAGE_NOTAB) {
            res->pages_data++;
            set_bit(s->data, pfn);
        } else {
            res->pages_xalloc++;
        }
        if (!refill) {
            set_bit(s->fill, pfn);
            s->filled++;
            g->filled++;
            res->pages_populated++;
            if (pfn + 1 > c->max_filled)
                c->max_filled = pfn + 1;
        }
    }
    /* The data, in entry order, straight into the frames: runs of data
     * pages on machine-contiguous frames are copied together (copy_run). */
    for (uint32_t i = 0; i < count;) {
        unsigned t = stream_entry_type(c->pfns[i]);
        mfn_t mfn = c->mfns[i] & ~MFN_REFILL;
        if (t == STREAM_PAGE_NOTAB && c->o->dry_run) {
            rc = stream_read_body(r, c->scratch, PAGE_SIZE);
        } else if (t == STREAM_PAGE_NOTAB) {
            uint32_t n = 1;
            while (i + n < count && stream_entry_type(c->pfns[i + n]) == STREAM_PAGE_NOTAB &&
                   (c->mfns[i + n] & ~MFN_REFILL) == mfn + n)
                n++;
            rc = copy_run(c, mfn, n, c->pfns + i);
            i += n;
            if (rc < 0)
                return rc;
            continue;
        } else if (t == STREAM_PAGE_XALLOC && (c->mfns[i] & MFN_REFILL) && !c->o->dry_run) {
            memset(machine_ptr(c->m, mfn), 0, PAGE_SIZE); /* fresh frames are already zero */
        }
        if (t == STREAM_PAGE_XALLOC && c->o->digest && rc == 0) {
            gfn_t pfn = stream_entry_pfn(c->pfns[i]);
            struct rs_2m *s = node_2m(c, pfn, false);
            if (s && bit(s->fill, pfn))
                rc = digest_set(c, s, pfn, stream_digest_term(pfn, c->zero_hash));
        }
        if (rc < 0)
            return rc;
        i++;
    }
    if (c->ndrop) {
        rc = drop_pfns(c);
        if (rc < 0)
            return rc;
    }
    if (c->o->progress)
        c->o->progress(c->o->progress_ctx, r->offset);
    return 0;
}

/* ---- other records ------------------------------------------------------------- */

static int hv_layout(struct rctx *c)
{
    struct stream_reader *r = &c->rd;
    struct stream_hv_layout_header h;
    uint64_t body = r->rec_offset + 8;
    if (r->length < sizeof(h))
        return FAIL(c, -EBADMSG, body, "body of %u bytes is shorter than its header", r->length);
    int rc = stream_read_body(r, &h, sizeof(h));
    if (rc < 0)
        return rc;
    uint32_t n = le32toh(h.count);
    if (r->length != 8 + 8ULL * n)
        return FAIL(c, -EBADMSG, body, "%u extents need %llu bytes, body has %u", n,
                    8 + 8ULL * n, r->length);
    c->res->have_layout = true;
    bool prealloc = !c->o->ignore_layout && !c->o->xen_2025_rule && !c->seen_page_data;
    if (prealloc) {
        rc = make_domain(c);
        if (rc < 0)
            return rc;
    }
    for (uint32_t i = 0; i < n; i++) {
        uint64_t x, at = r->offset;
        rc = stream_read_body(r, &x, 8);
        if (rc < 0)
            return rc;
        x = le64toh(x);
        unsigned order = (unsigned)(x >> STREAM_EXTENT_ORDER_SHIFT);
        gfn_t gfn = x & STREAM_PFN_MASK;
        if ((order != PAGE_ORDER_2M && order != PAGE_ORDER_1G) || !is_aligned_order(gfn, order) ||
            (x & ((0xfULL << 52))))
            return FAIL(c, -EBADMSG, at, "layout entry %u: bad extent %#llx", i,
                        (unsigned long long)x);
        if (order == PAGE_ORDER_1G)
            c->res->layout_1g++;
        else
            c->res->layout_2m++;
        if (!prealloc)
            continue;
        fix_limit(c);
        if (gfn >= c->limit || order_pages(order) > c->limit - gfn)
            return FAIL(c, -ERANGE, at, "layout entry %u: extent at %#llx is beyond the domain",
                        i, (unsigned long long)gfn);
        if (c->o->dry_run)
            continue;
        if (c->d->tot_pages + order_pages(order) > c->budget) {
            c->res->layout_skipped++; /* a hint: first touches build the same leaves */
            continue;
        }
        rc = domain_map_extent(c->d, gfn, order, NULL);
        if (rc < 0) {
            /* A hint the domain cannot take (a hole, a 4K-only range, an
             * extent mapped already, no memory) is skipped: a dry run
             * cannot know the domain's answer, and both must agree. */
            if (rc == -ENOMEM)
                c->res->fallback_nomem++;
            else
                c->res->layout_skipped++;
            continue;
        }
        if (order == PAGE_ORDER_1G)
            c->res->prealloc_1g++;
        else
            c->res->prealloc_2m++;
    }
    return 0;
}

static int hv_config(struct rctx *c)
{
    uint8_t *b;
    int rc = read_whole(c, &b);
    if (rc < 0)
        return rc;
    char msg[160] = "";
    rc = hvctx_check(b, c->rd.length, msg, sizeof(msg));
    if (rc <= 0) {
        free(b);
        return FAIL(c, rc < 0 ? rc : -EBADMSG, c->rd.rec_offset + 8, "%s",
                    rc < 0 ? msg : "HV_CONFIG does not hold a hugevm context blob");
    }
    struct stream_config cfg;
    bool have = false;
    rc = parse_blob(c, b, c->rd.length, &cfg, &have, false);
    free(b);
    if (rc < 0)
        return rc;
    if (have) {
        if (c->domain_made) { /* too late to shape the domain: checked at END */
            if (!c->have_late) {
                c->late = cfg;
                c->have_late = true;
            }
        } else {
            c->res->config = cfg;
            c->res->have_config = true;
        }
    }
    return 0;
}

static int hvm_context(struct rctx *c)
{
    if (c->rd.length == 0)
        return FAIL(c, -EBADMSG, UINT64_MAX, "HVM_CONTEXT is empty");
    uint8_t *b;
    int rc = read_whole(c, &b);
    if (rc < 0)
        return rc;
    char msg[160] = "";
    rc = hvctx_check(b, c->rd.length, msg, sizeof(msg));
    if (rc < 0) {
        free(b);
        return FAIL(c, rc, c->rd.rec_offset + 8, "%s", msg);
    }
    if (rc == 0) {
        free(b);
        c->res->vcpu = RESTORE_VCPU_FOREIGN;
        snprintf(c->res->note, sizeof(c->res->note),
                 "HVM_CONTEXT (%u bytes) is not hugevm's: memory restored, "
                 "vCPU state not usable", c->rd.length);
        return 0;
    }
    struct stream_config cfg;
    bool have = false;
    rc = parse_blob(c, b, c->rd.length, &cfg, &have, true);
    free(b);
    if (rc < 0)
        return rc;
    c->res->vcpu = RESTORE_VCPU_HUGEVM;
    if (have && !c->have_late) {
        c->late = cfg;
        c->have_late = true;
    }
    return 0;
}

static int hvm_params(struct rctx *c)
{
    struct stream_hvm_params_header h;
    if (c->rd.length < sizeof(h))
        return FAIL(c, -EBADMSG, c->rd.rec_offset + 8, "body shorter than its header");
    int rc = stream_read_body(&c->rd, &h, sizeof(h));
    if (rc < 0)
        return rc;
    uint32_t n = le32toh(h.count);
    if (c->rd.length != 8 + 16ULL * n)
        return FAIL(c, -EBADMSG, c->rd.rec_offset + 8, "%u params need %llu bytes, body has %u",
                    n, 8 + 16ULL * n, c->rd.length);
    c->res->nr_hvm_params += n;
    return 0;
}

/* HV_CHECKSUM: the xxh64 of every byte before the record. */
static int hv_checksum(struct rctx *c)
{
    struct stream_hv_checksum h;
    uint64_t body = c->rd.rec_offset + 8;
    if (c->rd.length != sizeof(h))
        return FAIL(c, -EBADMSG, body, "HV_CHECKSUM body is %u bytes, want %zu", c->rd.length,
                    sizeof(h));
    int rc = stream_read_body(&c->rd, &h, sizeof(h));
    if (rc < 0)
        return rc;
    if (le32toh(h.algo) != STREAM_CSUM_XXH64) { /* another algorithm: an unknown record */
        c->res->skipped_records++;
        return 0;
    }
    c->res->have_checksum = true;
    if (le64toh(h.covered) != c->rd.rec_offset)
        return FAIL(c, -EBADMSG, body + 8, "HV_CHECKSUM covers %llu bytes, but the record "
                    "starts at byte %llu", (unsigned long long)le64toh(h.covered),
                    (unsigned long long)c->rd.rec_offset);
    if (!c->rd.hashing)
        return 0;
    if (le64toh(h.hash) != c->rd.hash_before)
        return FAIL(c, -EBADMSG, body + 16, "stream checksum mismatch: bytes [0, %llu) hash to "
                    "%#llx, the record says %#llx (bit rot, or the file changed while it was "
                    "read)", (unsigned long long)c->rd.rec_offset,
                    (unsigned long long)c->rd.hash_before,
                    (unsigned long long)le64toh(h.hash));
    c->res->checksum_verified = true;
    return 0;
}

static int tsc_info(struct rctx *c)
{
    if (c->rd.length != sizeof(struct stream_x86_tsc_info))
        return FAIL(c, -EBADMSG, c->rd.rec_offset + 4, "X86_TSC_INFO body is %u bytes, want %zu",
                    c->rd.length, sizeof(struct stream_x86_tsc_info));
    struct stream_x86_tsc_info t;
    int rc = stream_read_body(&c->rd, &t, sizeof(t));
    if (rc < 0)
        return rc;
    c->res->tsc.mode = le32toh(t.mode);
    c->res->tsc.khz = le32toh(t.khz);
    c->res->tsc.nsec = le64toh(t.nsec);
    c->res->tsc.incarnation = le32toh(t.incarnation);
    c->res->have_tsc = true;
    return 0;
}

/* ---- END --------------------------------------------------------------------------- */

struct runs {
    struct rctx *c;
    gfn_t *g;
    uint64_t *n;
    size_t len, cap;
    int rc;
};

static int runs_add(struct runs *rs, gfn_t g, uint64_t n)
{
    if (rs->len && rs->g[rs->len - 1] + rs->n[rs->len - 1] == g) {
        rs->n[rs->len - 1] += n;
        return 0;
    }
    if (rs->len == rs->cap) {
        size_t cap = rs->cap ? rs->cap * 2 : 64;
        gfn_t *g2 = hv_malloc(cap * sizeof(*g2));
        uint64_t *n2 = hv_malloc(cap * sizeof(*n2));
        if (!g2 || !n2) {
            free(g2);
            free(n2);
            return -ENOMEM;
        }
        if (rs->len) {
            memcpy(g2, rs->g, rs->len * sizeof(*g2));
            memcpy(n2, rs->n, rs->len * sizeof(*n2));
        }
        free(rs->g);
        free(rs->n);
        rs->g = g2;
        rs->n = n2;
        rs->cap = cap;
    }
    rs->g[rs->len] = g;
    rs->n[rs->len] = n;
    rs->len++;
    return 0;
}

/* Collect the unfilled pfns of each RAM leaf. */
static int unfilled_leaf(void *ctx, gfn_t gfn, mfn_t mfn, unsigned order,
                         enum p2m_type type, ept_entry_t *e)
{
    struct runs *rs = ctx;
    (void)mfn;
    (void)e;
    if (!p2m_is_ram(type))
        return 0;
    struct rctx *c = rs->c;
    gfn_t end = gfn + order_pages(order);
    if (order == PAGE_ORDER_1G) {
        struct rs_1g *g = node_1g(c, gfn);
        if (g && g->filled == REGION_1G)
            return 0;
    }
    for (gfn_t b = gfn & ~511ULL; b < end; b += 512) {
        struct rs_2m *s = node_2m(c, b, false);
        gfn_t lo = b > gfn ? b : gfn, hi = b + 512 < end ? b + 512 : end;
        if (!s) {
            if (runs_add(rs, lo, hi - lo) < 0)
                return -ENOMEM;
            continue;
        }
        if (s->filled == 512)
            continue;
        for (gfn_t x = lo; x < hi; x++)
            if (!bit(s->fill, x) && runs_add(rs, x, 1) < 0)
                return -ENOMEM;
    }
    return 0;
}

/* Give back every mapped page the stream has not filled (speculation):
 * at END, and once early when speculation reaches the budget. */
static int free_unfilled(struct rctx *c)
{
    struct runs rs = {.c = c};
    int rc = p2m_for_each_leaf(c->d->p2m, 0, P2M_GFN_LIMIT, unfilled_leaf, &rs);
    for (size_t i = 0; rc == 0 && i < rs.len; i++) {
        long n = domain_decrease_reservation(c->d, rs.g[i], rs.n[i]);
        if (n < 0)
            rc = (int)n;
        else
            c->res->freed_pages += (uint64_t)n;
    }
    free(rs.g);
    free(rs.n);
    return rc;
}

static bool cfg_block_4k_only(const struct stream_config *cfg, gfn_t g, unsigned order)
{
    for (unsigned i = 0; i < cfg->nr_4k_ranges; i++) {
        const struct gfn_range *r = &cfg->ranges_4k[i];
        if (r->gfn < g + order_pages(order) && g < r->gfn + r->nr)
            return true;
    }
    return false;
}

/* Dry run: the leaves a restore would build on an unfragmented machine. */
static void predict(struct rctx *c, const struct stream_config *cfg)
{
    struct restore_result *res = c->res;
    for (uint64_t i = 0; i < c->ntop; i++)
        if (c->g1[i].filled == REGION_1G &&
            (!cfg || !cfg_block_4k_only(cfg, i << PAGE_ORDER_1G, 18)))
            res->pages_1g++;
    for (size_t i = 0; i < c->tab_cap; i++) {
        const struct rs_2m *s = c->tab[i].s;
        if (!s)
            continue;
        gfn_t base = (c->tab[i].key - 1) << PAGE_ORDER_2M;
        if (node_1g(c, base)->filled == REGION_1G &&
            (!cfg || !cfg_block_4k_only(cfg, base & ~(REGION_1G - 1), 18)))
            continue;
        if (s->filled == 512 && (!cfg || !cfg_block_4k_only(cfg, base, 9)))
            res->pages_2m++;
        else
            res->pages_4k += s->filled;
    }
}

/* The first filled pfn in [lo, hi), or INVALID_GFN. */
static gfn_t first_filled(struct rctx *c, gfn_t lo, gfn_t hi)
{
    for (gfn_t g = lo; g < hi;) {
        const struct rs_1g *g1 = node_1g(c, g);
        gfn_t next_1g = (g | (REGION_1G - 1)) + 1;
        if (!g1 || !g1->filled) {
            g = next_1g;
            continue;
        }
        const struct rs_2m *s = node_2m(c, g, false);
        gfn_t next_2m = (g | 511) + 1;
        if (s && s->filled)
            for (gfn_t x = g; x < next_2m && x < hi; x++)
                if (bit(s->fill, x))
                    return x;
        g = next_2m;
    }
    return INVALID_GFN;
}

/* A configuration that came after the page data: no RAM may lie in the
 * holes it declares.  Checked on the region state, so that a dry run and a
 * restore say the same. */
static int check_late_holes(struct rctx *c, const struct stream_config *cfg)
{
    gfn_t hs = GFN_4G - (cfg->mmio_hole_bytes >> PAGE_SHIFT);
    gfn_t g = first_filled(c, hs, GFN_4G);
    if (g != INVALID_GFN)
        return FAIL(c, -EEXIST, UINT64_MAX, "pfn %#llx is populated but lies in the "
                    "MMIO hole of the configuration", (unsigned long long)g);
    if (cfg->vga_hole && (g = first_filled(c, VGA_HOLE_GFN, VGA_HOLE_GFN + VGA_HOLE_NR)) !=
                             INVALID_GFN)
        return FAIL(c, -EEXIST, UINT64_MAX, "pfn %#llx is populated but lies in the "
                    "VGA hole", (unsigned long long)g);
    return 0;
}

static int apply_late_config(struct rctx *c, const struct stream_config *cfg)
{
    struct domain *d = c->d;
    d->mmio_hole_start = GFN_4G - (cfg->mmio_hole_bytes >> PAGE_SHIFT);
    d->mmio_hole_end = GFN_4G;
    d->vga_hole = cfg->vga_hole;
    for (unsigned i = 0; i < cfg->nr_4k_ranges; i++) {
        int rc = p2m_add_4k_range(d->p2m, cfg->ranges_4k[i].gfn, cfg->ranges_4k[i].nr);
        if (rc < 0)
            return FAIL(c, rc, UINT64_MAX, "4K-only range %u: %s", i, strerror(-rc));
    }
    return 0;
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

/*
 * Check the PoD entries against the stream and the configuration (the same
 * checks in a dry run and a restore): orders 0/9/18, aligned, below
 * max_gfn, no overlap with populated pfns, with each other, with a hole of
 * the configuration, no superpage entry over a 4K-only range.  *pages gets
 * the pages they cover.
 */
static int check_pod(struct rctx *c, const struct stream_config *cfg, gfn_t max_gfn,
                     uint64_t *pages)
{
    *pages = 0;
    if (!c->npod)
        return 0;
    uint64_t *sorted = hv_malloc(c->npod * sizeof(*sorted));
    if (!sorted)
        return FAIL(c, -ENOMEM, UINT64_MAX, "out of memory for %zu PoD entries", c->npod);
    int rc = 0;
    for (size_t i = 0; i < c->npod && rc == 0; i++) {
        uint64_t x = c->pod[i];
        unsigned order = (unsigned)(x >> STREAM_EXTENT_ORDER_SHIFT);
        gfn_t gfn = x & STREAM_PFN_MASK;
        if ((order != 0 && order != PAGE_ORDER_2M && order != PAGE_ORDER_1G) ||
            !is_aligned_order(gfn, order) || (x & (0xfULL << 52)) || gfn >= max_gfn ||
            order_pages(order) > max_gfn - gfn) {
            rc = FAIL(c, -EBADMSG, UINT64_MAX, "PoD entry %zu: bad extent %#llx", i,
                      (unsigned long long)x);
            break;
        }
        gfn_t end = gfn + order_pages(order);
        gfn_t f = first_filled(c, gfn, end);
        if (f != INVALID_GFN)
            rc = FAIL(c, -EEXIST, UINT64_MAX, "PoD entry %zu at %#llx overlaps populated "
                      "pfn %#llx", i, (unsigned long long)gfn, (unsigned long long)f);
        else if (cfg && ((cfg->vga_hole && gfn < VGA_HOLE_GFN + VGA_HOLE_NR &&
                          end > VGA_HOLE_GFN) ||
                         (gfn < GFN_4G && end > GFN_4G - (cfg->mmio_hole_bytes >> PAGE_SHIFT))))
            rc = FAIL(c, -EEXIST, UINT64_MAX, "PoD entry %zu at %#llx covers a hole", i,
                      (unsigned long long)gfn);
        else if (cfg && order && cfg_block_4k_only(cfg, gfn, order))
            rc = FAIL(c, -EBADMSG, UINT64_MAX, "PoD entry %zu: order %u over a 4K-only range",
                      i, order);
        /* gfn in bits 0-51, order above: sorting by gfn */
        sorted[i] = (gfn << 8) | order;
        *pages += order_pages(order);
    }
    if (rc == 0) {
        qsort(sorted, c->npod, sizeof(*sorted), cmp_u64);
        for (size_t i = 1; i < c->npod && rc == 0; i++) {
            gfn_t pg = sorted[i - 1] >> 8;
            if (pg + order_pages((unsigned)(sorted[i - 1] & 0xff)) > (sorted[i] >> 8))
                rc = FAIL(c, -EEXIST, UINT64_MAX, "PoD entries at %#llx and %#llx overlap",
                          (unsigned long long)pg, (unsigned long long)(sorted[i] >> 8));
        }
    }
    free(sorted);
    return rc;
}

/* The PoD cache a restore sets up (as pod_set_cache_target and
 * pod_set_target do), so that a dry run predicts tot_pages exactly. */
static uint64_t pod_cache_pages(const struct rctx *c, uint64_t populated, uint64_t entries)
{
    uint64_t want = 0;
    if (c->have_pod_cache)
        want = c->pod_cache;
    else if (c->pod_target)
        want = c->pod_target > populated ? c->pod_target - populated : 0;
    return want < entries ? want : entries;
}

/* Restore the PoD entries (checked by check_pod) and the cache. */
static int restore_pod(struct rctx *c)
{
    for (size_t i = 0; i < c->npod; i++) {
        uint64_t x = c->pod[i];
        unsigned order = (unsigned)(x >> STREAM_EXTENT_ORDER_SHIFT);
        gfn_t gfn = x & STREAM_PFN_MASK;
        enum p2m_type t;
        unsigned lo;
        p2m_get_entry(c->d->p2m, gfn, &t, &lo);
        if (t != p2m_invalid || lo < order)
            return FAIL(c, -EEXIST, UINT64_MAX, "PoD entry %zu at %#llx overlaps a mapping", i,
                        (unsigned long long)gfn);
        struct populate_result pr;
        int rc = domain_populate_flags(c->d, gfn, order_pages(order), DOMAIN_POPULATE_POD, &pr);
        if (rc < 0)
            return FAIL(c, rc, UINT64_MAX, "PoD entry %zu: %s", i, strerror(-rc));
        c->res->pod_entries++;
    }
    if (c->have_pod_cache) {
        /* The source's cache exactly (its target is only a record of the
         * last request: target - populated differs from the cache once RAM
         * was populated or released beside PoD). */
        uint64_t cache = c->pod_cache < c->d->pod.entry_count ? c->pod_cache
                                                               : c->d->pod.entry_count;
        int rc = pod_set_cache_target(c->d, cache);
        if (rc < 0)
            return FAIL(c, rc, UINT64_MAX, "PoD cache of %llu pages: %s",
                        (unsigned long long)cache, strerror(-rc));
        c->d->pod.target = c->pod_target;
        c->res->pod_target = c->pod_target;
    } else if (c->pod_target) {
        int rc = pod_set_target(c->d, c->pod_target);
        if (rc < 0)
            return FAIL(c, rc, UINT64_MAX, "PoD target of %llu pages: %s",
                        (unsigned long long)c->pod_target, strerror(-rc));
        c->res->pod_target = c->pod_target;
    }
    return 0;
}

/* The data bits of every region, flat up to the highest populated pfn,
 * for the caller (track_data). */
static int export_data_bits(struct rctx *c)
{
    struct restore_result *res = c->res;
    gfn_t nr = (c->max_filled + 511) & ~(gfn_t)511;
    res->data_bits = hv_calloc(nr / 64 + 1, 8);
    if (!res->data_bits)
        return FAIL(c, -ENOMEM, UINT64_MAX, "out of memory for the data bitmap");
    res->data_bits_nr = nr;
    for (size_t i = 0; i < c->tab_cap; i++) {
        const struct rs_2m *s = c->tab[i].s;
        gfn_t g = (c->tab[i].key - 1) << PAGE_ORDER_2M;
        if (s && g < nr)
            memcpy(res->data_bits + g / 64, s->data, sizeof(s->data));
    }
    return 0;
}

static int ram_leaf_found(void *ctx, gfn_t gfn, mfn_t mfn, unsigned order,
                          enum p2m_type type, ept_entry_t *e)
{
    gfn_t *first = ctx;
    (void)mfn;
    (void)order;
    (void)e;
    if (!p2m_is_ram(type))
        return 0;
    *first = gfn;
    return 1;
}

/* Live: pfns were checked against the p2m's limit only (the guest may grow
 * during the migration); at END no RAM may lie at or above the max_gfn of
 * the configuration at pause time. */
static int ram_beyond(struct rctx *c, gfn_t max_gfn)
{
    gfn_t first = INVALID_GFN;
    if (max_gfn < P2M_GFN_LIMIT &&
        p2m_for_each_leaf(c->d->p2m, max_gfn, P2M_GFN_LIMIT - max_gfn, ram_leaf_found,
                          &first) > 0)
        return FAIL(c, -ERANGE, UINT64_MAX, "pfn %#llx is beyond the domain (max_gfn %#llx)",
                    (unsigned long long)(first > max_gfn ? first : max_gfn),
                    (unsigned long long)max_gfn);
    return 0;
}

/* Live: the configuration at pause may differ from the one at the start
 * only in max_gfn and tot_pages (RAM came or went). */
static bool cfg_equal_live(const struct stream_config *a, const struct stream_config *b)
{
    struct stream_config x = *b;
    x.max_gfn = a->max_gfn;
    return cfg_equal(a, &x);
}

/*
 * The checks at END, on the stream alone (region state, PoD entries and
 * the configuration), the same for a dry run (`hugevm inspect`) and a
 * restore: after them a restore can fail only for want of machine memory
 * or p2m tables (-ENOMEM) or an I/O error.  Every count the stream states
 * is checked against what it carried: the pfns against max_gfn, the pages
 * it populates plus the PoD cache against tot_pages and max_pages.
 */
static int check_end(struct rctx *c, const struct stream_config *cfg, gfn_t max_gfn)
{
    struct restore_result *res = c->res;
    int rc;
    if (cfg && c->max_seen > cfg->max_gfn && !c->o->live) /* live: see ram_beyond */
        return FAIL(c, -ERANGE, UINT64_MAX, "pfn %#llx is beyond the domain (max_gfn %#llx)",
                    (unsigned long long)(c->max_seen - 1), (unsigned long long)cfg->max_gfn);
    if (cfg && !c->cfg_at_create && (rc = check_late_holes(c, cfg)) < 0)
        return rc;
    uint64_t pod_pages;
    if ((rc = check_pod(c, cfg, max_gfn, &pod_pages)) < 0)
        return rc;
    if (!cfg)
        return 0;
    uint64_t cache = pod_cache_pages(c, res->pages_populated, pod_pages);
    uint64_t tot = res->pages_populated + cache;
    if (tot > cfg->max_pages)
        return FAIL(c, -EDQUOT, UINT64_MAX, "the stream populates %llu pages (PoD cache "
                    "included), max_pages is %llu", (unsigned long long)tot,
                    (unsigned long long)cfg->max_pages);
    if (tot != cfg->tot_pages)
        return FAIL(c, -EBADMSG, UINT64_MAX, "the stream carries %llu pages (%llu populated, "
                    "%llu in the PoD cache), its configuration states tot_pages %llu",
                    (unsigned long long)tot, (unsigned long long)res->pages_populated,
                    (unsigned long long)cache, (unsigned long long)cfg->tot_pages);
    return 0;
}

static int finish(struct rctx *c)
{
    struct restore_result *res = c->res;
    int rc = make_domain(c);
    if (rc < 0)
        return rc;
    const struct stream_config *cfg = res->have_config ? &res->config
                                      : c->have_late  ? &c->late
                                                      : NULL;
    if (res->have_config && c->have_late &&
        !(c->o->live ? cfg_equal_live(&res->config, &c->late) : cfg_equal(&res->config, &c->late)))
        return FAIL(c, -EBADMSG, UINT64_MAX,
                    "HV_CONFIG and HVM_CONTEXT carry different domain configurations");
    if (c->have_late && (!res->have_config || c->o->live)) {
        res->config = c->late; /* live: the guest at pause time */
        res->have_config = true;
        cfg = &res->config;
    }
    gfn_t max_gfn = cfg ? cfg->max_gfn : c->limit;
    rc = check_end(c, cfg, max_gfn);
    if (rc < 0)
        return rc;
    if (c->o->dry_run) {
        predict(c, cfg);
        res->pod_entries = c->npod;
        return 0;
    }
    struct domain *d = c->d;
    /* Give back what was allocated speculatively and never filled. */
    rc = free_unfilled(c);
    if (rc < 0)
        return FAIL(c, rc, UINT64_MAX, "freeing unfilled speculative pages: %s", strerror(-rc));
    if (!c->o->xen_2025_rule) { /* (Xen keeps the leaves it allocated) */
        long merged = p2m_coalesce(d->p2m, 0, P2M_GFN_LIMIT);
        res->merges = merged > 0 ? (uint64_t)merged : 0;
    }
    if (cfg && !c->cfg_at_create) {
        rc = apply_late_config(c, cfg);
        if (rc < 0)
            return rc;
    }
    if (c->o->live && (rc = ram_beyond(c, max_gfn)) < 0)
        return rc;
    rc = restore_pod(c);
    if (rc < 0)
        return rc;
    if (cfg) {
        if (d->tot_pages > cfg->max_pages) /* (check_end predicted it) */
            return FAIL(c, -EDQUOT, UINT64_MAX, "%llu pages restored, max_pages is %llu",
                        (unsigned long long)d->tot_pages, (unsigned long long)cfg->max_pages);
        d->max_pages = cfg->max_pages;
    }
    res->pages_1g = domain_pages_1g(d);
    res->pages_2m = domain_pages_2m(d);
    res->pages_4k = domain_pages_4k(d);
    return c->o->track_data ? export_data_bits(c) : 0;
}

/* ---- the record loop ------------------------------------------------------------- */

static int dispatch(struct rctx *c, uint32_t type)
{
    switch (type) {
    case STREAM_REC_PAGE_DATA: return page_data(c);
    case STREAM_REC_STATIC_DATA_END:
        c->seen_static_end = true;
        return 0;
    case STREAM_REC_X86_TSC_INFO: return tsc_info(c);
    case STREAM_REC_HVM_PARAMS: return hvm_params(c);
    case STREAM_REC_HVM_CONTEXT: return hvm_context(c);
    case STREAM_REC_HV_CONFIG: return hv_config(c);
    case STREAM_REC_HV_LAYOUT: return hv_layout(c);
    case STREAM_REC_HV_CHECKSUM: return hv_checksum(c);
    case STREAM_REC_VERIFY:
    case STREAM_REC_TOOLSTACK:
    case STREAM_REC_X86_CPUID_POLICY:
    case STREAM_REC_X86_MSR_POLICY:
        c->res->skipped_records++;
        return 0;
    case STREAM_REC_CHECKPOINT:
    case STREAM_REC_CHECKPOINT_DIRTY_PFN_LIST:
        return FAIL(c, -ENOTSUP, UINT64_MAX, "checkpointed (Remus/COLO) streams are not supported");
    default:
        if (type & STREAM_REC_OPTIONAL) {
            c->res->skipped_records++;
            return 0;
        }
        if (type <= STREAM_REC_X86_MSR_POLICY)
            return FAIL(c, -ENOTSUP, UINT64_MAX, "record is not valid in an x86 HVM stream");
        return FAIL(c, -ENOTSUP, UINT64_MAX, "unknown mandatory record type %#x", type);
    }
}

int stream_restore(struct machine *m, struct stream_io *io, const struct restore_opts *o,
                   struct restore_result *res)
{
    static const struct restore_opts defaults;
    struct rctx *c = hv_calloc(1, sizeof(*c));
    memset(res, 0, sizeof(*res));
    res->domid = DOMID_INVALID;
    if (!c) {
        snprintf(res->err, sizeof(res->err), "stream headers at offset 0: out of memory");
        return -ENOMEM;
    }
    c->m = m;
    c->o = o ? o : &defaults;
    c->res = res;
    c->zero_hash = stream_zero_page_hash();
    uint64_t t0 = hv_now_ns();
    stream_reader_init(&c->rd, io);
    if (c->o->verify_checksum)
        stream_reader_hash(&c->rd);
    int rc = stream_read_headers(&c->rd);
    if (rc == 0) {
        res->version = c->rd.version;
        res->xen_major = c->rd.dhdr.xen_major;
        res->xen_minor = c->rd.dhdr.xen_minor;
    }
    while (rc == 0) {
        struct stream_rhdr h;
        rc = stream_next_record(&c->rd, &h);
        if (rc < 0)
            break;
        res->records++;
        if (c->o->on_record)
            c->o->on_record(c->o->record_ctx, c->rd.index, h.type, h.length, c->rd.rec_offset);
        if (h.type == STREAM_REC_END) {
            if (h.length)
                rc = FAIL(c, -EBADMSG, c->rd.rec_offset + 4, "END has a %u-byte body", h.length);
            else
                rc = finish(c);
            if (rc == 0)
                rc = stream_skip_body(&c->rd);
            break;
        }
        rc = dispatch(c, h.type);
    }
    res->bytes = c->rd.offset;
    if (rc < 0) {
        snprintf(res->err, sizeof(res->err), "%s", c->rd.err[0] ? c->rd.err : strerror(-rc));
        domain_destroy(c->d);
        c->d = NULL;
        restore_result_free(res);
    } else if (res->vcpu == RESTORE_VCPU_NONE && !res->note[0]) {
        snprintf(res->note, sizeof(res->note), "no HVM_CONTEXT record: vCPU state not usable");
    }
    res->d = c->d;
    uint64_t xen_pages = res->pages_populated;
    res->xen_4k = xen_pages - 512 * (res->xen_2m < xen_pages / 512 ? res->xen_2m : xen_pages / 512);
    res->seconds = (double)(hv_now_ns() - t0) / 1e9;
    if (rc == 0 && c->o->keep_state)
        res->state = c; /* restore_state_free, when it costs nothing */
    else
        rctx_free(c);
    return rc;
}

void restore_state_free(struct restore_result *res)
{
    if (res->state)
        rctx_free(res->state);
    res->state = NULL;
}

void restore_result_free(struct restore_result *res)
{
    restore_state_free(res);
    free(res->data_bits);
    res->data_bits = NULL;
    res->data_bits_nr = 0;
    free(res->context);
    res->context = NULL;
    res->context_len = 0;
}
