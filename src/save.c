/*
 * save.c - write a domain as a migration stream, and hugevm's context blob.
 *
 * The save walks the p2m once to learn max_gfn (end of the last RAM or PoD
 * leaf), the source's 1G/2M RAM extents (HV_LAYOUT) and its PoD entries,
 * then emits PAGE_DATA batches over [0, max_gfn) in the requested order.
 * Page bodies are written straight from machine memory (no staging copy):
 * runs of machine-contiguous data pages go to the sink in one write.
 *
 * Zero pages: a page inside a hole of the machine memfd (never written, or
 * punched by the scrubber) is zero without being read: SEEK_DATA/SEEK_HOLE
 * windows are cached so a contiguous extent costs a couple of lseek calls.
 * A page in a data window is read and tested.  Zero pages travel as XALLOC.
 *
 * Invariants: every gfn of [0, max_gfn) inside a 1G block that holds RAM
 * or PoD appears exactly once in the PAGE_DATA records (wholly empty 1G
 * blocks are left out: the receiver maps nothing it is not sent); a PAGE_DATA body never exceeds STREAM_MAX_BODY.
 */
#include "save.h"

#include <endian.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <xxhash.h>

#include "zero.h"

/* ---- hugevm context blob -------------------------------------------------- */

static int buf_reserve(struct hvctx_buf *b, size_t more)
{
    if (more <= b->cap - b->len)
        return 0;
    size_t cap = b->cap ? b->cap : 256;
    while (cap - b->len < more) {
        if (cap > SIZE_MAX / 2)
            return -ENOMEM;
        cap *= 2;
    }
    uint8_t *p = hv_malloc(cap);
    if (!p)
        return -ENOMEM;
    if (b->len)
        memcpy(p, b->p, b->len);
    free(b->p);
    b->p = p;
    b->cap = cap;
    return 0;
}

int hvctx_begin(struct hvctx_buf *b)
{
    memset(b, 0, sizeof(*b));
    int rc = buf_reserve(b, sizeof(struct hvctx_header));
    if (rc < 0)
        return rc;
    memset(b->p, 0, sizeof(struct hvctx_header));
    b->len = sizeof(struct hvctx_header);
    return 0;
}

int hvctx_add(struct hvctx_buf *b, uint16_t type, uint16_t flags, const void *v,
              uint32_t len)
{
    size_t padded = ((size_t)len + 7) & ~(size_t)7;
    if (len > STREAM_MAX_BODY)
        return -EINVAL;
    int rc = buf_reserve(b, sizeof(struct hvctx_tlv) + padded);
    if (rc < 0)
        return rc;
    struct hvctx_tlv t = {htole16(type), htole16(flags), htole32(len)};
    memcpy(b->p + b->len, &t, sizeof(t));
    b->len += sizeof(t);
    if (len)
        memcpy(b->p + b->len, v, len);
    memset(b->p + b->len + len, 0, padded - len);
    b->len += padded;
    return 0;
}

int hvctx_append(struct hvctx_buf *b, const void *tlvs, size_t len)
{
    if (len % 8)
        return -EINVAL;
    int rc = buf_reserve(b, len);
    if (rc < 0)
        return rc;
    memcpy(b->p + b->len, tlvs, len);
    b->len += len;
    return 0;
}

void hvctx_finish(struct hvctx_buf *b)
{
    struct hvctx_header h;
    size_t area = b->len - sizeof(h);
    h.magic = htole64(HVCTX_MAGIC);
    h.version = htole32(HVCTX_VERSION);
    h.length = htole32((uint32_t)area);
    h.checksum = htole64(XXH64(b->p + sizeof(h), area, 0));
    memcpy(b->p, &h, sizeof(h));
}

void hvctx_free(struct hvctx_buf *b)
{
    free(b->p);
    memset(b, 0, sizeof(*b));
}

int hvctx_check(const void *blob, size_t len, char *err, size_t errlen)
{
    struct hvctx_header h;
    if (len < sizeof(h))
        return 0;
    memcpy(&h, blob, sizeof(h));
    if (le64toh(h.magic) != HVCTX_MAGIC)
        return 0;
    if (le32toh(h.version) != HVCTX_VERSION) {
        snprintf(err, errlen, "hugevm context version %u (this build reads %u)",
                 le32toh(h.version), HVCTX_VERSION);
        return -EPROTONOSUPPORT;
    }
    if (le32toh(h.length) != len - sizeof(h)) {
        snprintf(err, errlen, "hugevm context says %u bytes of TLVs, the record holds %zu",
                 le32toh(h.length), len - sizeof(h));
        return -EBADMSG;
    }
    uint64_t sum = XXH64((const uint8_t *)blob + sizeof(h), len - sizeof(h), 0);
    if (sum != le64toh(h.checksum)) {
        snprintf(err, errlen, "hugevm context checksum %#llx, computed %#llx",
                 (unsigned long long)le64toh(h.checksum), (unsigned long long)sum);
        return -EBADMSG;
    }
    return 1;
}

int hvctx_area_next(const void *area, size_t len, size_t *pos, struct hvctx_tlv *t,
                    const uint8_t **val, char *err, size_t errlen)
{
    const uint8_t *p = area;
    size_t at = *pos;
    if (at >= len)
        return 0;
    if (len - at < sizeof(*t)) {
        if (err && errlen)
            snprintf(err, errlen, "HVM_CONTEXT: truncated TLV header at %zu", at);
        return -EBADMSG;
    }
    memcpy(t, p + at, sizeof(*t));
    t->type = le16toh(t->type);
    t->flags = le16toh(t->flags);
    t->length = le32toh(t->length);
    size_t padded = ((size_t)t->length + 7) & ~(size_t)7;
    if (padded > len - at - sizeof(*t)) {
        if (err && errlen)
            snprintf(err, errlen, "HVM_CONTEXT: TLV at %zu overruns the area", at);
        return -EBADMSG;
    }
    *val = p + at + sizeof(*t);
    *pos = at + sizeof(*t) + padded;
    return 1;
}

int hvctx_next(const void *blob, size_t len, size_t *pos, struct hvctx_tlv *t,
               const uint8_t **val)
{
    if (len <= sizeof(struct hvctx_header))
        return 0;
    return hvctx_area_next((const uint8_t *)blob + sizeof(struct hvctx_header),
                           len - sizeof(struct hvctx_header), pos, t, val, NULL, 0);
}

/* ---- the source scan -------------------------------------------------------- */

struct u64vec {
    uint64_t *v;
    size_t n, cap;
};

static int vec_push(struct u64vec *a, uint64_t x)
{
    if (a->n == a->cap) {
        size_t cap = a->cap ? a->cap * 2 : 256;
        uint64_t *v = hv_malloc(cap * sizeof(*v));
        if (!v)
            return -ENOMEM;
        if (a->n)
            memcpy(v, a->v, a->n * sizeof(*v));
        free(a->v);
        a->v = v;
        a->cap = cap;
    }
    a->v[a->n++] = x;
    return 0;
}

struct scan {
    gfn_t max_gfn;
    struct u64vec layout, pod;
    struct u64vec blocks; /* 1G block indexes holding RAM or PoD, ascending */
    uint64_t n1g, n2m, n4k;
};

static void scan_free(struct scan *sc)
{
    free(sc->layout.v);
    free(sc->pod.v);
    free(sc->blocks.v);
}

static int scan_leaf(void *ctx, gfn_t gfn, mfn_t mfn, unsigned order,
                     enum p2m_type type, ept_entry_t *e)
{
    struct scan *s = ctx;
    (void)mfn;
    (void)e;
    int rc = 0;
    if (p2m_is_ram(type)) {
        if (order == PAGE_ORDER_1G)
            s->n1g++;
        else if (order == PAGE_ORDER_2M)
            s->n2m++;
        else
            s->n4k++;
        if (order)
            rc = vec_push(&s->layout, stream_extent_entry(gfn, order));
    } else if (type == p2m_pod) {
        rc = vec_push(&s->pod, stream_extent_entry(gfn, order));
    } else {
        return 0;
    }
    if (gfn + order_pages(order) > s->max_gfn)
        s->max_gfn = gfn + order_pages(order);
    uint64_t blk = gfn >> PAGE_ORDER_1G;
    if (rc == 0 && (!s->blocks.n || s->blocks.v[s->blocks.n - 1] != blk))
        rc = vec_push(&s->blocks, blk);
    return rc;
}

/* Encode the domain configuration (+ PoD entries) as TLVs. */
static int add_config_tlvs(struct hvctx_buf *b, const struct domain *d,
                           const struct scan *s)
{
    struct {
        struct hvctx_config c;
        uint64_t r[2 * DOMAIN_MAX_4K_RANGES];
    } w;
    memset(&w, 0, sizeof(w));
    w.c.max_pages = htole64(d->max_pages);
    w.c.max_gfn = htole64(s->max_gfn);
    w.c.mmio_hole_bytes = htole64((d->mmio_hole_end - d->mmio_hole_start) << PAGE_SHIFT);
    w.c.tot_pages = htole64(d->tot_pages);
    w.c.flags = htole32(d->vga_hole ? HVCTX_CFG_VGA_HOLE : 0);
    /* The domain does not keep its 4K-only ranges; the p2m answers per
     * block.  Probe the 2M blocks of [0, max_gfn): ranges travel rounded
     * out to 2M, which forbids exactly the same superpages. */
    unsigned n = 0;
    gfn_t run = INVALID_GFN;
    for (gfn_t g = 0; g < s->max_gfn && n < DOMAIN_MAX_4K_RANGES; g += 512) {
        bool only = p2m_range_is_4k_only(d->p2m, g, PAGE_ORDER_2M);
        if (only && run == INVALID_GFN)
            run = g;
        if ((!only || g + 512 >= s->max_gfn) && run != INVALID_GFN) {
            gfn_t end = only ? g + 512 : g;
            w.r[2 * n] = htole64(run);
            w.r[2 * n + 1] = htole64(end - run);
            n++;
            run = INVALID_GFN;
        }
    }
    w.c.nr_4k_ranges = htole32(n);
    int rc = hvctx_add(b, HVCTX_CONFIG, HVCTX_F_CRITICAL, &w,
                       (uint32_t)(sizeof(w.c) + 16 * n));
    /* PoD entries, target and cache: also when no entry is left but a
     * target was set (a live migration's tail must say that none is left) */
    if (rc < 0 || (!s->pod.n && !d->pod.target && !d->pod.count))
        return rc;
    size_t len = 16 + s->pod.n * 8;
    if (len > STREAM_MAX_BODY / 2)
        return -E2BIG;
    uint8_t *p = hv_malloc(len);
    if (!p)
        return -ENOMEM;
    uint32_t hdr[2] = {htole32((uint32_t)s->pod.n), 0};
    uint64_t target = htole64(d->pod.target);
    memcpy(p, hdr, 8);
    memcpy(p + 8, &target, 8);
    for (size_t i = 0; i < s->pod.n; i++) {
        uint64_t x = htole64(s->pod.v[i]);
        memcpy(p + 16 + 8 * i, &x, 8);
    }
    rc = hvctx_add(b, HVCTX_POD, HVCTX_F_CRITICAL, p, (uint32_t)len);
    free(p);
    if (rc < 0)
        return rc;
    uint64_t cache = htole64(d->pod.count);
    return hvctx_add(b, HVCTX_POD_CACHE, 0, &cache, sizeof(cache));
}

/* ---- save -------------------------------------------------------------------- */

struct saver {
    struct domain *d;
    const struct save_opts *o;
    struct save_result *res;
    struct stream_writer w;
    struct machine_holes dm;
    uint64_t *entries;
    const void **data;
    gfn_t *perm;
    const struct u64vec *blocks;
};

/* The i-th pfn of the sequence [0, n) over the sent 1G blocks. */
static gfn_t seq_pfn(const struct saver *s, uint64_t i)
{
    uint64_t blk = s->blocks->v[i >> PAGE_ORDER_1G];
    return (blk << PAGE_ORDER_1G) + (i & ((1ULL << PAGE_ORDER_1G) - 1));
}

static gfn_t pfn_at(const struct saver *s, uint64_t i, uint64_t n)
{
    switch (s->o->order) {
    case SAVE_ORDER_REVERSE: return seq_pfn(s, n - 1 - i);
    case SAVE_ORDER_RANDOM: return seq_pfn(s, s->perm[i]);
    default: return seq_pfn(s, i);
    }
}

static int write_batch(struct saver *s, uint64_t first, uint32_t count, uint64_t total)
{
    uint32_t ndata = 0;
    struct domain *d = s->d;
    /* Pass 1: where each page is (data[k], NULL for no RAM; the pfn waits
     * in entries[k]), one p2m walk per leaf, and a prefetch of each page's
     * first line.  Pass 2 reads the pages: the zero check of a data page
     * stops at that line, so without the prefetch each page would cost a
     * page walk and a memory latency in turn (still ~20% of a save's time
     * with 4K host mappings, which serialise on the page walkers). */
    gfn_t lo = 1, hi = 0; /* the last leaf looked up: [lo, hi) from base */
    mfn_t base = 0;
    bool ram = false;
    for (uint32_t k = 0; k < count; k++) {
        gfn_t pfn = pfn_at(s, first + k, total);
        if (pfn < lo || pfn >= hi) { /* one walk per leaf, not per page */
            enum p2m_type t;
            unsigned order;
            mfn_t mfn = p2m_get_entry(d->p2m, pfn, &t, &order);
            lo = pfn & ~(order_pages(order) - 1);
            hi = lo + order_pages(order);
            ram = p2m_is_ram(t);
            base = ram ? mfn - (pfn - lo) : 0;
        }
        s->entries[k] = pfn;
        s->data[k] = ram ? machine_ptr(d->m, base + (pfn - lo)) : NULL;
        if (ram)
            __builtin_prefetch(s->data[k], 0, 3);
    }
    for (uint32_t k = 0; k < count; k++) {
        const uint8_t *p = s->data[k];
        gfn_t pfn = s->entries[k];
        unsigned type;
        if (!p) {
            type = STREAM_PAGE_XTAB;
            s->res->pages_xtab++;
        } else if (!s->o->no_xalloc &&
                   (machine_offset_in_hole(&s->dm, (uint64_t)(p - d->m->base)) ||
                    zero_check(p, PAGE_SIZE))) {
            type = STREAM_PAGE_XALLOC;
            s->res->pages_zero++;
        } else {
            type = STREAM_PAGE_NOTAB;
            s->data[ndata++] = p; /* ndata <= k: compacts in place */
            s->res->pages_data++;
        }
        s->entries[k] = htole64(stream_pfn_entry(pfn, type));
    }
    uint64_t len = 8 + 8ULL * count + PAGE_SIZE * ndata;
    struct stream_page_data_header h = {htole32(count), 0};
    int rc = stream_record_begin(&s->w, STREAM_REC_PAGE_DATA, (uint32_t)len);
    if (rc == 0)
        rc = stream_write_part(&s->w, &h, sizeof(h));
    if (rc == 0)
        rc = stream_write_part(&s->w, s->entries, 8ULL * count);
    /* Pages adjacent in machine memory (a gfn run inside one extent) go
     * out in one write: a file sink then writes them straight from the
     * machine (no staging copy), a memory sink copies them in one go. */
    for (uint32_t k = 0; k < ndata && rc == 0;) {
        const uint8_t *p = s->data[k];
        uint32_t n = 1;
        while (k + n < ndata && (const uint8_t *)s->data[k + n] == p + (size_t)n * PAGE_SIZE)
            n++;
        rc = stream_write_part(&s->w, p, (size_t)n * PAGE_SIZE);
        k += n;
    }
    if (rc == 0)
        rc = stream_record_end(&s->w);
    s->res->page_data_records++;
    return rc;
}

static int write_layout(struct saver *s, const struct scan *sc)
{
    /* Split into records under the body limit. */
    const size_t per = (STREAM_MAX_BODY - 8) / 8;
    size_t i = 0;
    do {
        size_t n = sc->layout.n - i < per ? sc->layout.n - i : per;
        struct stream_hv_layout_header h = {htole32((uint32_t)n), 0};
        int rc = stream_record_begin(&s->w, STREAM_REC_HV_LAYOUT, (uint32_t)(8 + 8 * n));
        if (rc == 0)
            rc = stream_write_part(&s->w, &h, sizeof(h));
        for (size_t k = 0; k < n && rc == 0; k++) {
            uint64_t x = htole64(sc->layout.v[i + k]);
            rc = stream_write_part(&s->w, &x, 8);
        }
        if (rc == 0)
            rc = stream_record_end(&s->w);
        if (rc < 0)
            return rc;
        i += n;
    } while (i < sc->layout.n);
    return 0;
}

int stream_save(struct domain *d, struct stream_io *io, const struct save_opts *o,
                struct save_result *res, char *err, size_t errlen)
{
    static const struct save_opts defaults;
    struct save_result local;
    struct scan sc = {0};
    struct hvctx_buf blob = {0};
    struct saver s = {.d = d, .o = o ? o : &defaults};
    char dummy[8];
    if (!res)
        res = &local;
    if (!err) {
        err = dummy;
        errlen = sizeof(dummy);
    }
    memset(res, 0, sizeof(*res));
    s.res = res;
    o = s.o;
    uint32_t batch = o->batch ? o->batch : SAVE_DEFAULT_BATCH;
    uint32_t first = o->first_batch ? o->first_batch : batch;
    if (batch > SAVE_MAX_BATCH || first > SAVE_MAX_BATCH ||
        (o->extra_tlvs_len && !o->extra_tlvs) || o->extra_tlvs_len > STREAM_MAX_BODY / 2) {
        snprintf(err, errlen, "bad save options (batch at most %u pfns)", SAVE_MAX_BATCH);
        return -EINVAL;
    }
    uint64_t t0 = hv_now_ns();
    stream_writer_init(&s.w, io);
    if (!o->no_optional)
        stream_writer_hash(&s.w); /* for HV_CHECKSUM before END */
    machine_holes_init(&s.dm, d->m);
    const char *stage = "scanning the p2m";
    int rc = p2m_for_each_leaf(d->p2m, 0, P2M_GFN_LIMIT, scan_leaf, &sc);
    if (rc < 0)
        goto out;
    res->max_gfn = sc.max_gfn;
    res->extents_1g = sc.n1g;
    res->extents_2m = sc.n2m;
    res->pages_4k = sc.n4k;
    res->pod_entries = sc.pod.n;
    s.blocks = &sc.blocks;
    /* pfns sent: every pfn of each 1G block that holds RAM or PoD, up to
     * max_gfn (wholly empty 1G blocks are not worth 2 MiB of XTAB). */
    uint64_t total = (uint64_t)sc.blocks.n << PAGE_ORDER_1G;
    if (sc.blocks.n && sc.max_gfn & ((1ULL << PAGE_ORDER_1G) - 1))
        total -= (1ULL << PAGE_ORDER_1G) - (sc.max_gfn & ((1ULL << PAGE_ORDER_1G) - 1));
    uint32_t bmax = batch > first ? batch : first;
    s.entries = hv_malloc(sizeof(*s.entries) * bmax);
    s.data = hv_malloc(sizeof(*s.data) * bmax);
    rc = -ENOMEM;
    if (!s.entries || !s.data)
        goto out;
    if (o->order == SAVE_ORDER_RANDOM && total) {
        s.perm = hv_malloc(sizeof(*s.perm) * total);
        if (!s.perm)
            goto out;
        struct hv_rng r = {o->seed};
        for (gfn_t i = 0; i < total; i++)
            s.perm[i] = i;
        for (gfn_t i = total - 1; i > 0; i--) {
            gfn_t j = hv_rng_below(&r, i + 1), x = s.perm[i];
            s.perm[i] = s.perm[j];
            s.perm[j] = x;
        }
    }
    stage = "building the hugevm context";
    rc = hvctx_begin(&blob);
    if (rc == 0)
        rc = add_config_tlvs(&blob, d, &sc);
    if (rc < 0)
        goto out;

    stage = "writing the headers";
    rc = stream_write_headers(&s.w);
    if (rc < 0)
        goto out;
    if (!o->no_optional) {
        stage = "writing HV_CONFIG";
        hvctx_finish(&blob);
        rc = stream_write_record(&s.w, STREAM_REC_HV_CONFIG, blob.p, (uint32_t)blob.len);
        if (rc < 0)
            goto out;
        stage = "writing HV_LAYOUT";
        rc = write_layout(&s, &sc);
        if (rc < 0)
            goto out;
    }
    stage = "writing STATIC_DATA_END";
    rc = stream_write_record(&s.w, STREAM_REC_STATIC_DATA_END, NULL, 0);
    if (rc < 0)
        goto out;
    stage = "writing PAGE_DATA";
    uint64_t last_progress = 0;
    for (uint64_t i = 0; i < total;) {
        uint64_t n = i == 0 ? first : batch;
        if (n > total - i)
            n = total - i;
        rc = write_batch(&s, i, (uint32_t)n, total);
        if (rc < 0)
            goto out;
        i += n;
        if (o->progress && (i - last_progress >= (64u << 10) || i == total)) {
            o->progress(o->progress_ctx, i, total);
            last_progress = i;
        }
    }
    stage = "writing X86_TSC_INFO";
    struct stream_x86_tsc_info tsc = {.mode = 0, .khz = htole32(1000000),
                                      .nsec = htole64(hv_now_ns())};
    rc = stream_write_record(&s.w, STREAM_REC_X86_TSC_INFO, &tsc, sizeof(tsc));
    if (rc < 0)
        goto out;
    stage = "writing HVM_PARAMS";
    struct stream_hvm_params_header ph = {0, 0};
    rc = stream_write_record(&s.w, STREAM_REC_HVM_PARAMS, &ph, sizeof(ph));
    if (rc < 0)
        goto out;
    stage = "writing HVM_CONTEXT";
    if (o->extra_tlvs_len) {
        rc = buf_reserve(&blob, o->extra_tlvs_len);
        if (rc < 0)
            goto out;
        memcpy(blob.p + blob.len, o->extra_tlvs, o->extra_tlvs_len);
        blob.len += o->extra_tlvs_len;
    }
    hvctx_finish(&blob);
    rc = stream_write_record(&s.w, STREAM_REC_HVM_CONTEXT, blob.p, (uint32_t)blob.len);
    if (rc < 0)
        goto out;
    if (!o->no_optional) {
        stage = "writing HV_CHECKSUM";
        rc = stream_write_checksum(&s.w);
        if (rc < 0)
            goto out;
    }
    stage = "writing END";
    rc = stream_write_record(&s.w, STREAM_REC_END, NULL, 0);
    if (rc == 0)
        rc = stream_writer_flush(&s.w);
out:
    res->records = s.w.records;
    res->bytes = s.w.offset;
    res->seconds = (double)(hv_now_ns() - t0) / 1e9;
    if (rc < 0)
        snprintf(err, errlen, "save failed %s at byte offset %llu: %s", stage,
                 (unsigned long long)s.w.offset, strerror(-rc));
    free(s.entries);
    free(s.data);
    free(s.perm);
    scan_free(&sc);
    hvctx_free(&blob);
    return rc;
}

/* ---- live migration: head and tail (see save.h) --------------------------------- */

int stream_save_head(struct domain *d, struct stream_writer *w, bool no_optional,
                     struct save_result *res, char *err, size_t errlen)
{
    struct scan sc = {0};
    struct hvctx_buf blob = {0};
    struct saver s = {.d = d, .w = *w};
    const char *stage = "scanning the p2m";
    int rc = p2m_for_each_leaf(d->p2m, 0, P2M_GFN_LIMIT, scan_leaf, &sc);
    if (rc == 0 && res) {
        memset(res, 0, sizeof(*res));
        res->max_gfn = sc.max_gfn;
        res->extents_1g = sc.n1g;
        res->extents_2m = sc.n2m;
        res->pages_4k = sc.n4k;
        res->pod_entries = sc.pod.n;
    }
    if (rc == 0) {
        stage = "building the hugevm context";
        rc = hvctx_begin(&blob);
    }
    if (rc == 0)
        rc = add_config_tlvs(&blob, d, &sc);
    if (rc == 0) {
        stage = "writing the headers";
        rc = stream_write_headers(&s.w);
    }
    if (rc == 0 && !no_optional) {
        stage = "writing HV_CONFIG";
        hvctx_finish(&blob);
        rc = stream_write_record(&s.w, STREAM_REC_HV_CONFIG, blob.p, (uint32_t)blob.len);
        if (rc == 0) {
            stage = "writing HV_LAYOUT";
            rc = write_layout(&s, &sc);
        }
    }
    if (rc == 0) {
        stage = "writing STATIC_DATA_END";
        rc = stream_write_record(&s.w, STREAM_REC_STATIC_DATA_END, NULL, 0);
    }
    *w = s.w;
    if (rc < 0 && err)
        snprintf(err, errlen, "stream head failed %s at byte offset %llu: %s", stage,
                 (unsigned long long)w->offset, strerror(-rc));
    scan_free(&sc);
    hvctx_free(&blob);
    return rc;
}

int stream_save_tail(struct domain *d, struct stream_writer *w, const void *extra_tlvs,
                     size_t extra_tlvs_len, char *err, size_t errlen)
{
    struct scan sc = {0};
    struct hvctx_buf blob = {0};
    const char *stage = "checking the options";
    int rc = 0;
    if ((extra_tlvs_len && !extra_tlvs) || extra_tlvs_len > STREAM_MAX_BODY / 2)
        rc = -EINVAL;
    if (rc == 0) {
        stage = "scanning the p2m";
        rc = p2m_for_each_leaf(d->p2m, 0, P2M_GFN_LIMIT, scan_leaf, &sc);
    }
    if (rc == 0) {
        stage = "building the hugevm context";
        rc = hvctx_begin(&blob);
    }
    if (rc == 0)
        rc = add_config_tlvs(&blob, d, &sc);
    if (rc == 0 && extra_tlvs_len) {
        rc = buf_reserve(&blob, extra_tlvs_len);
        if (rc == 0) {
            memcpy(blob.p + blob.len, extra_tlvs, extra_tlvs_len);
            blob.len += extra_tlvs_len;
        }
    }
    if (rc == 0) {
        stage = "writing X86_TSC_INFO";
        struct stream_x86_tsc_info tsc = {.mode = 0, .khz = htole32(1000000),
                                          .nsec = htole64(hv_now_ns())};
        rc = stream_write_record(w, STREAM_REC_X86_TSC_INFO, &tsc, sizeof(tsc));
    }
    if (rc == 0) {
        stage = "writing HVM_PARAMS";
        struct stream_hvm_params_header ph = {0, 0};
        rc = stream_write_record(w, STREAM_REC_HVM_PARAMS, &ph, sizeof(ph));
    }
    if (rc == 0) {
        stage = "writing HVM_CONTEXT";
        hvctx_finish(&blob);
        rc = stream_write_record(w, STREAM_REC_HVM_CONTEXT, blob.p, (uint32_t)blob.len);
    }
    if (rc == 0) {
        stage = "writing END";
        rc = stream_write_record(w, STREAM_REC_END, NULL, 0);
    }
    if (rc == 0)
        rc = stream_writer_flush(w);
    if (rc < 0 && err)
        snprintf(err, errlen, "stream tail failed %s at byte offset %llu: %s", stage,
                 (unsigned long long)w->offset, strerror(-rc));
    scan_free(&sc);
    hvctx_free(&blob);
    return rc;
}
