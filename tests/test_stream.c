/*
 * test_stream.c - the migration stream: wire format, writer/reader, save and
 * restore round trips (leaf counts equal the source's, xxhash of every
 * page equal), restore without hugevm's optional records and from a
 * foreign producer, the Xen 2025 rule for comparison, every error path
 * (specific error, record and offset named, no frame left allocated) and
 * allocation failure at every site.
 */
#include <fcntl.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cmocka.h>

#include "testutil.h"
#include <xxhash.h>

#include "migrate.h"
#include "save.h"



/* ---- content --------------------------------------------------------------- */

/* Write recognisable bytes into roughly one page in `every` of each RAM
 * leaf (always the first page of a leaf), the rest stays zero. */
struct fill_ctx {
    struct domain *d;
    struct hv_rng rng;
    unsigned every;
};

static int fill_leaf(void *ctx, gfn_t gfn, mfn_t mfn, unsigned order,
                     enum p2m_type type, ept_entry_t *e)
{
    struct fill_ctx *f = ctx;
    (void)e;
    if (!p2m_is_ram(type))
        return 0;
    for (uint64_t i = 0; i < order_pages(order); i++) {
        if (i && hv_rng_below(&f->rng, f->every))
            continue;
        uint64_t *p = machine_ptr(f->d->m, mfn + i);
        for (unsigned k = 0; k < PAGE_SIZE / 8; k += 61)
            p[k] = (gfn + i) * 0x9E3779B97F4A7C15ULL + k + 1;
    }
    return 0;
}

static void fill_content(struct domain *d, uint64_t seed, unsigned every)
{
    struct fill_ctx f = {d, {seed}, every};
    assert_int_equal(p2m_for_each_leaf(d->p2m, 0, P2M_GFN_LIMIT, fill_leaf, &f), 0);
}

/* xxhash of a machine page; a page in a hole of the memfd hashes as zero
 * without being read (reading would commit host memory). */
struct hasher {
    struct machine *m;
    uint64_t lo, hi;
    bool data;
    uint64_t zero_hash;
};

static uint64_t page_hash(struct hasher *h, mfn_t mfn)
{
    uint64_t off = machine_offset(mfn);
    if (!(off >= h->lo && off < h->hi)) {
        off_t ds = lseek(h->m->fd, (off_t)off, SEEK_DATA);
        if (ds < 0) {
            h->lo = off;
            h->hi = UINT64_MAX;
            h->data = false;
        } else if ((uint64_t)ds > off) {
            h->lo = off;
            h->hi = (uint64_t)ds;
            h->data = false;
        } else {
            h->lo = off;
            h->hi = (uint64_t)lseek(h->m->fd, (off_t)off, SEEK_HOLE);
            h->data = true;
        }
    }
    if (!h->data)
        return h->zero_hash;
    return XXH64(machine_ptr(h->m, mfn), PAGE_SIZE, 0);
}

struct cmp_ctx {
    struct domain *dst;
    struct hasher hs, hd;
    uint64_t pages;
};

static int cmp_leaf(void *ctx, gfn_t gfn, mfn_t mfn, unsigned order,
                    enum p2m_type type, ept_entry_t *e)
{
    struct cmp_ctx *c = ctx;
    (void)e;
    enum p2m_type t2;
    unsigned o2;
    mfn_t m2 = p2m_get_entry(c->dst->p2m, gfn, &t2, &o2);
    if (!p2m_is_ram(type)) {
        if (t2 != type)
            fail_msg("gfn %#llx: type %s restored as %s", (unsigned long long)gfn,
                     p2m_type_name(type), p2m_type_name(t2));
        return 0;
    }
    for (uint64_t i = 0; i < order_pages(order); i++) {
        m2 = p2m_get_entry(c->dst->p2m, gfn + i, &t2, NULL);
        if (!p2m_is_ram(t2))
            fail_msg("gfn %#llx is RAM in the source, %s restored", (unsigned long long)(gfn + i),
                     p2m_type_name(t2));
        if (page_hash(&c->hs, mfn + i) != page_hash(&c->hd, m2))
            fail_msg("gfn %#llx: content differs", (unsigned long long)(gfn + i));
        c->pages++;
    }
    return 0;
}

/* The leaves a maximal layout of src's RAM has: a 1G (2M) leaf for every
 * aligned region that is all RAM and not 4K-only, 4K for the rest. */
static void ideal_leaves(struct domain *src, uint64_t out[3])
{
    out[0] = out[1] = out[2] = 0;
    for (gfn_t g1 = 0; g1 < (1ULL << 24); g1 += 1u << 18) {
        uint64_t n1 = 0, n2[512] = {0};
        for (gfn_t g = g1; g < g1 + (1u << 18);) {
            enum p2m_type t;
            unsigned o;
            p2m_get_entry(src->p2m, g, &t, &o);
            uint64_t step = order_pages(o) - (g & (order_pages(o) - 1));
            if (p2m_is_ram(t)) {
                n1 += step;
                for (gfn_t x = g; x < g + step; x += 512)
                    n2[(x >> 9) & 511] += step < 512 ? step : 512;
            }
            g += step;
        }
        if (n1 == (1u << 18) && !p2m_range_is_4k_only(src->p2m, g1, 18)) {
            out[2]++;
            continue;
        }
        for (unsigned k = 0; k < 512; k++) {
            if (n2[k] == 512 && !p2m_range_is_4k_only(src->p2m, g1 + 512ULL * k, 9))
                out[1]++;
            else
                out[0] += n2[k];
        }
    }
}

/* The restored domain maps the same gfns with the same content, and its
 * leaf counts per order and type equal the source's (exact) or those of a
 * maximal layout of the source's RAM (random layouts, where the source may
 * hold 4K leaves over a complete 2M region). */
/* dst maps the same RAM gfns as src with the same bytes (and no more). */
static void assert_same_content(struct domain *src, struct domain *dst)
{
    static uint8_t zero[PAGE_SIZE];
    struct cmp_ctx c = {.dst = dst};
    c.hs = (struct hasher){.m = src->m, .zero_hash = XXH64(zero, PAGE_SIZE, 0)};
    c.hd = (struct hasher){.m = dst->m, .zero_hash = c.hs.zero_hash};
    assert_int_equal(p2m_for_each_leaf(src->p2m, 0, P2M_GFN_LIMIT, cmp_leaf, &c), 0);
    assert_int_equal(c.pages, src->tot_pages - src->pod.count);
    assert_int_equal(dst->tot_pages, src->tot_pages);
}

static void assert_same_guest_x(struct domain *src, struct domain *dst, bool exact)
{
    assert_same_content(src, dst);
    assert_int_equal(dst->pod.entry_count, src->pod.entry_count);
    assert_int_equal(dst->pod.count, src->pod.count);
    struct p2m_stats a, b;
    p2m_get_stats(src->p2m, &a);
    p2m_get_stats(dst->p2m, &b);
    uint64_t ideal[3];
    ideal_leaves(src, ideal);
    for (unsigned l = 0; l < 3; l++) {
        if (exact && a.leaves[l][p2m_ram_rw] != ideal[l])
            fail_msg("test set-up: source is not maximal at order %u", 9 * l);
        a.leaves[l][p2m_ram_rw] = ideal[l];
    }
    for (unsigned l = 0; l < 3; l++)
        for (unsigned t = 1; t < P2M_NR_TYPES; t++)
            if (a.leaves[l][t] != b.leaves[l][t])
                fail_msg("leaves of order %u type %s: source %llu restored %llu", l * 9,
                         p2m_type_name((enum p2m_type)t), (unsigned long long)a.leaves[l][t],
                         (unsigned long long)b.leaves[l][t]);
    AUDIT_OK(domain_audit(dst));
    AUDIT_OK(frames_audit(dst->m->frames));
}

static void assert_same_guest(struct domain *src, struct domain *dst)
{
    assert_same_guest_x(src, dst, true);
}

/* ---- helpers ------------------------------------------------------------------- */

struct blob {
    struct stream_mem mem;
    struct stream_io io;
};

static void save_to(struct blob *b, struct domain *d, const struct save_opts *o,
                    struct save_result *sr)
{
    char err[256];
    stream_mem_sink(&b->mem, &b->io);
    int rc = stream_save(d, &b->io, o, sr, err, sizeof(err));
    if (rc)
        fail_msg("save: %s", err);
}

static int restore_from(struct machine *m, const void *buf, size_t len,
                        const struct restore_opts *o, struct restore_result *rr)
{
    struct stream_mem src;
    struct stream_io io;
    stream_mem_source(&src, &io, buf, len);
    return stream_restore(m, &io, o, rr);
}

/* Save src with o, restore on a fresh machine (with and without the layout
 * record, and as a dry run), compare. */
static void round_trip_x(struct domain *src, const struct save_opts *o, const char *what,
                         bool exact)
{
    struct blob b;
    struct save_result sr;
    save_to(&b, src, o, &sr);
    for (int pass = 0; pass < 2; pass++) {
        struct machine *m2 = new_machine(src->m->bytes);
        struct restore_result rr;
        struct restore_opts ro = {.ignore_layout = pass == 1};
        int rc = restore_from(m2, b.mem.buf, b.mem.len, &ro, &rr);
        if (rc)
            fail_msg("%s: restore: %s", what, rr.err);
        assert_same_guest_x(src, rr.d, exact);
        struct restore_result dry;
        struct restore_opts dro = {.dry_run = true};
        assert_int_equal(restore_from(m2, b.mem.buf, b.mem.len, &dro, &dry), 0);
        assert_int_equal(dry.pages_1g, rr.pages_1g);
        assert_int_equal(dry.pages_2m, rr.pages_2m);
        assert_int_equal(dry.pages_4k, rr.pages_4k);
        if (pass == 0)
            print_message("# %-34s %6.1f MiB stream: src 1g %llu 2m %llu 4k %llu | restored "
                          "spec 1g %llu 2m %llu 4k %llu freed %llu | Xen rule 2m %llu 4k %llu\n",
                          what, (double)b.mem.len / MiB, (unsigned long long)sr.extents_1g,
                          (unsigned long long)sr.extents_2m, (unsigned long long)sr.pages_4k,
                          (unsigned long long)rr.spec_1g, (unsigned long long)rr.spec_2m,
                          (unsigned long long)rr.alloc_4k, (unsigned long long)rr.freed_pages,
                          (unsigned long long)rr.xen_2m, (unsigned long long)rr.xen_4k);
        domain_destroy(rr.d);
        restore_result_free(&rr);
        restore_result_free(&dry);
        assert_machine_empty(m2);
        machine_destroy(m2);
    }
    stream_mem_free(&b.mem);
}

static void round_trip(struct domain *src, const struct save_opts *o, const char *what)
{
    round_trip_x(src, o, what, true);
}

/* ---- wire format ---------------------------------------------------------------- */

static void test_wire_format(void **state)
{
    (void)state;
    struct stream_mem mem;
    struct stream_io io;
    struct stream_writer w;
    stream_mem_sink(&mem, &io);
    stream_writer_init(&w, &io);
    assert_int_equal(stream_write_headers(&w), 0);
    assert_int_equal(w.offset, 40);
    /* big-endian image header */
    static const uint8_t ih[24] = {0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
                                   'X', 'E', 'N', 'F', 0, 0, 0, 3};
    assert_memory_equal(mem.buf, ih, 24);
    assert_int_equal(mem.buf[24], 2); /* domain type, little-endian */
    assert_int_equal(mem.buf[28], 12);
    assert_int_equal(stream_write_record(&w, 0x1234, "abc", 3), 0);
    assert_int_equal(mem.len, 40 + 8 + 8); /* padded to 8 */
    assert_int_equal(mem.buf[44], 3);
    assert_int_equal(mem.buf[51], 0);
    assert_int_equal(stream_write_record(&w, STREAM_REC_END, NULL, 0), 0);
    assert_int_equal(stream_record_begin(&w, 1, STREAM_MAX_BODY + 1), -EINVAL);

    struct stream_mem src;
    struct stream_reader r;
    stream_mem_source(&src, &io, mem.buf, mem.len);
    stream_reader_init(&r, &io);
    assert_int_equal(stream_read_headers(&r), 0);
    struct stream_rhdr h;
    assert_int_equal(stream_next_record(&r, &h), 0);
    assert_int_equal(h.type, 0x1234);
    assert_int_equal(h.length, 3);
    char buf[8];
    assert_int_equal(stream_read_body(&r, buf, 3), 0);
    assert_memory_equal(buf, "abc", 3);
    assert_int_equal(stream_read_body(&r, buf, 1), -EBADMSG);
    assert_non_null(strstr(r.err, "record #0"));
    assert_int_equal(stream_next_record(&r, &h), 0);
    assert_int_equal(h.type, STREAM_REC_END);
    assert_int_equal(r.index, 1);
    assert_int_equal(r.rec_offset, 56);
    assert_int_equal(stream_next_record(&r, &h), -ENODATA);
    assert_non_null(strstr(r.err, "truncated"));

    /* hugevm context blob: round trip, checksum */
    struct hvctx_buf b;
    assert_int_equal(hvctx_begin(&b), 0);
    assert_int_equal(hvctx_add(&b, 77, 0, "hello", 5), 0);
    hvctx_finish(&b);
    char err[128];
    assert_int_equal(hvctx_check(b.p, b.len, err, sizeof(err)), 1);
    size_t pos = 0;
    struct hvctx_tlv t;
    const uint8_t *v;
    assert_int_equal(hvctx_next(b.p, b.len, &pos, &t, &v), 1);
    assert_int_equal(t.type, 77);
    assert_int_equal(t.length, 5);
    assert_memory_equal(v, "hello", 5);
    assert_int_equal(hvctx_next(b.p, b.len, &pos, &t, &v), 0);
    b.p[b.len - 1] ^= 1;
    assert_int_equal(hvctx_check(b.p, b.len, err, sizeof(err)), -EBADMSG);
    assert_int_equal(hvctx_check("not ours", 8, err, sizeof(err)), 0);
    hvctx_free(&b);
    stream_mem_free(&mem);
}

/* ---- round trips ------------------------------------------------------------------ */

/* A 1.5 GiB guest (one 1G leaf, 2M leaves, the 4K VGA block) in every page
 * order, batch size, with and without optional records. */
static void test_round_trip_orders(void **state)
{
    (void)state;
    struct machine *m = new_machine(4 * GiB);
    struct domain *d = new_guest(m, 1536 * MiB);
    fill_content(d, 1, 61);
    static const struct {
        enum save_page_order order;
        uint32_t batch, first;
        bool no_optional;
        const char *name;
    } cases[] = {
        {SAVE_ORDER_GFN, 0, 0, false, "gfn order"},
        {SAVE_ORDER_GFN, 0, 0, true, "gfn order, no optional records"},
        {SAVE_ORDER_GFN, 1000, 300, true, "extents split across records"},
        {SAVE_ORDER_REVERSE, 0, 0, false, "reverse order"},
        {SAVE_ORDER_REVERSE, 777, 0, true, "reverse, no optional"},
        {SAVE_ORDER_RANDOM, 0, 0, false, "random order"},
        {SAVE_ORDER_RANDOM, 4096, 0, true, "random, no optional"},
    };
    for (size_t i = 0; i < ARRAY_SIZE(cases); i++) {
        struct save_opts o = {.order = cases[i].order, .batch = cases[i].batch,
                              .first_batch = cases[i].first,
                              .no_optional = cases[i].no_optional, .seed = i + 1};
        round_trip(d, &o, cases[i].name);
    }
    /* zero pages with their data */
    domain_destroy(d);
    d = new_domain(m);
    assert_int_equal(domain_populate_guest(d, 64 * MiB, NULL), 0);
    fill_content(d, 2, 3);
    struct save_opts o = {.no_xalloc = true};
    round_trip(d, &o, "64M, zero pages as data");
    down_guest(d, m);
}

/* Holes inside extents (ballooned 4K pages, a 2M inside a 1G, a range
 * crossing a 2M border), 4K-only ranges, and PoD entries keep their shape. */
static void test_round_trip_holes(void **state)
{
    (void)state;
    struct machine *m = new_machine(4 * GiB);
    struct domain_config cfg;
    domain_config_default(&cfg);
    cfg.nr_4k_ranges = 1;
    cfg.ranges_4k[0] = (struct gfn_range){0x30000, 700};
    struct domain *d = new_domain_cfg(m, &cfg);
    assert_int_equal(domain_populate_guest(d, 1536 * MiB, NULL), 0);
    assert_true(domain_decrease_reservation(d, 0x1234, 1) == 1);
    assert_true(domain_decrease_reservation(d, 0x40000 + 512 * 7, 512) == 512);
    assert_true(domain_decrease_reservation(d, 0x40000 + 512 * 20 + 500, 30) == 30);
    assert_true(domain_decrease_reservation(d, 0x20000, 3) == 3);
    /* PoD entries beyond the RAM: one 1G, one 2M, a few 4K, and a cache */
    assert_int_equal(domain_populate_flags(d, 0x80000, 1u << 18, DOMAIN_POPULATE_POD, NULL), 0);
    assert_int_equal(domain_populate_flags(d, 0x60000, 512 + 5, DOMAIN_POPULATE_POD, NULL), 0);
    assert_int_equal(pod_set_target(d, d->tot_pages + 1000), 0);
    /* 4K PoD entries sharing their 2M region with a populated pfn */
    assert_int_equal(pod_demand_populate(d, 0x60201), 0);
    enum p2m_type t;
    p2m_get_entry(d->p2m, 0x60201, &t, NULL);
    assert_int_equal(t, p2m_ram_rw);
    p2m_get_entry(d->p2m, 0x60202, &t, NULL);
    assert_int_equal(t, p2m_pod);
    fill_content(d, 3, 41);
    AUDIT_OK(domain_audit(d));
    struct save_opts o = {0};
    round_trip(d, &o, "holes, 4K-only, PoD");
    o.no_optional = true;
    round_trip(d, &o, "holes, 4K-only, PoD, no optional");
    o.order = SAVE_ORDER_RANDOM;
    o.batch = 333;
    round_trip(d, &o, "holes, 4K-only, PoD, random");
    down_guest(d, m);
}

/* A guest bigger than 4 GiB: RAM on both sides of the MMIO hole, mostly
 * zero pages (XALLOC). */
static void test_round_trip_big(void **state)
{
    (void)state;
    struct machine *m = new_machine(6 * GiB);
    struct domain *d = new_guest(m, 5 * GiB);
    assert_true(domain_pages_1g(d) >= 3);
    fill_content(d, 4, 4001);
    struct save_opts o = {0};
    round_trip(d, &o, "5 GiB guest, MMIO hole");
    o.order = SAVE_ORDER_REVERSE;
    o.no_optional = true;
    round_trip(d, &o, "5 GiB guest, reverse, no optional");
    down_guest(d, m);
}

/* Random p2m layouts: random populate ranges and balloon holes, random page
 * order and batch sizes. */
static void test_round_trip_random(void **state)
{
    (void)state;
    struct machine *m = new_machine(4 * GiB);
    for (uint64_t seed = 1; seed <= 6; seed++) {
        struct hv_rng r = {seed * 1000};
        struct domain_config cfg;
        domain_config_default(&cfg);
        cfg.no_vga_hole = seed & 1;
        cfg.mmio_hole_bytes = 0;
        struct domain *d = new_domain_cfg(m, &cfg);
        for (int k = 0; k < 6; k++) {
            gfn_t g = hv_rng_below(&r, 1u << 19);
            uint64_t n = 1 + hv_rng_below(&r, k < 2 ? (1u << 18) : 4096);
            assert_int_equal(domain_populate(d, g, n, NULL), 0);
        }
        for (int k = 0; k < 12; k++) {
            gfn_t g = hv_rng_below(&r, 1u << 19);
            assert_true(domain_decrease_reservation(d, g, 1 + hv_rng_below(&r, 1024)) >= 0);
        }
        fill_content(d, seed, 17);
        struct save_opts o = {.order = (enum save_page_order)(seed % 3),
                              .batch = 1 + (uint32_t)hv_rng_below(&r, 3000),
                              .no_optional = seed & 2, .seed = seed};
        char name[64];
        snprintf(name, sizeof(name), "random layout %llu", (unsigned long long)seed);
        round_trip_x(d, &o, name, false);
        domain_destroy(d);
    }
    assert_machine_empty(m);
    machine_destroy(m);
}

/* ---- a foreign producer ------------------------------------------------------------- */

/* Write a stream as another producer would: no hugevm records, an opaque
 * HVM_CONTEXT, pfn lists of `batch` entries in the given pfn sequence. */
static void foreign_stream(struct stream_mem *mem, const gfn_t *pfns, size_t n,
                           uint32_t batch, gfn_t xtab_from, gfn_t xtab_to)
{
    struct stream_io io;
    struct stream_writer w;
    stream_mem_sink(mem, &io);
    stream_writer_init(&w, &io);
    assert_int_equal(stream_write_headers(&w), 0);
    assert_int_equal(stream_write_record(&w, STREAM_REC_X86_CPUID_POLICY, "cpuidpol", 8), 0);
    assert_int_equal(stream_write_record(&w, STREAM_REC_STATIC_DATA_END, NULL, 0), 0);
    static uint8_t page[PAGE_SIZE];
    uint64_t *e = malloc(8 * batch);
    for (size_t i = 0; i < n;) {
        uint32_t c = (uint32_t)(n - i < batch ? n - i : batch);
        uint32_t nd = 0;
        for (uint32_t k = 0; k < c; k++) {
            gfn_t p = pfns[i + k];
            unsigned t = (p >= xtab_from && p < xtab_to) ? STREAM_PAGE_XTAB
                         : (p % 5 == 0)                  ? STREAM_PAGE_NOTAB
                                                         : STREAM_PAGE_XALLOC;
            nd += t == STREAM_PAGE_NOTAB;
            e[k] = stream_pfn_entry(p, t);
        }
        uint32_t hdr[2] = {c, 0};
        assert_int_equal(stream_record_begin(&w, STREAM_REC_PAGE_DATA, 8 + 8 * c + 4096 * nd), 0);
        assert_int_equal(stream_write_part(&w, hdr, 8), 0);
        assert_int_equal(stream_write_part(&w, e, 8ULL * c), 0);
        for (uint32_t k = 0; k < c; k++) {
            if (stream_entry_type(e[k]) != STREAM_PAGE_NOTAB)
                continue;
            memset(page, (int)(stream_entry_pfn(e[k]) & 0xff) | 1, sizeof(page));
            assert_int_equal(stream_write_part(&w, page, PAGE_SIZE), 0);
        }
        assert_int_equal(stream_record_end(&w), 0);
        i += c;
    }
    free(e);
    struct stream_x86_tsc_info tsc = {0};
    assert_int_equal(stream_write_record(&w, STREAM_REC_X86_TSC_INFO, &tsc, sizeof(tsc)), 0);
    uint64_t params[3] = {1, 2, 0x1000};
    uint32_t ph[2] = {1, 0};
    uint8_t pb[24];
    memcpy(pb, ph, 8);
    memcpy(pb + 8, params, 16);
    assert_int_equal(stream_write_record(&w, STREAM_REC_HVM_PARAMS, pb, 24), 0);
    assert_int_equal(stream_write_record(&w, STREAM_REC_HVM_CONTEXT, "QEMU-ish hvm state", 18), 0);
    assert_int_equal(stream_write_record(&w, STREAM_REC_END, NULL, 0), 0);
}

/* 1G + 3 x 2M of pfns, a hole inside the last 2M, in batches of 500 that
 * cut every extent, in random order: hugevm still gets 1G and 2M leaves,
 * Xen's rule gets none; the vCPU state is reported unusable. */
static void test_foreign_producer(void **state)
{
    (void)state;
    size_t n = (1u << 18) + 3 * 512;
    gfn_t *pfns = malloc(n * sizeof(*pfns));
    for (size_t i = 0; i < n; i++)
        pfns[i] = i;
    for (int shuffled = 0; shuffled < 2; shuffled++) {
        if (shuffled) {
            struct hv_rng r = {9};
            shuffle_gfns(pfns, n, &r);
        }
        struct stream_mem mem;
        foreign_stream(&mem, pfns, n, 500, (1u << 18) + 1024 + 100, (1u << 18) + 1024 + 110);
        struct machine *m = new_machine(3 * GiB);
        struct restore_result rr;
        int rc = restore_from(m, mem.buf, mem.len, NULL, &rr);
        if (rc)
            fail_msg("restore: %s", rr.err);
        assert_int_equal(rr.vcpu, RESTORE_VCPU_FOREIGN);
        assert_non_null(strstr(rr.note, "not usable"));
        assert_int_equal(domain_pages_1g(rr.d), 1);
        assert_int_equal(domain_pages_2m(rr.d), 2);
        assert_int_equal(domain_pages_4k(rr.d), 512 - 10);
        assert_int_equal(rr.xen_2m, 0); /* batches of 500 never hold a whole 2M */
        assert_int_equal(rr.nr_hvm_params, 1);
        assert_int_equal(rr.skipped_records, 1);
        /* content of the data pages */
        for (gfn_t g = 0; g < n; g += 5) {
            if (g >= (1u << 18) + 1024 + 100 && g < (1u << 18) + 1024 + 110)
                continue;
            uint8_t *p = machine_ptr(m, p2m_get_entry(rr.d->p2m, g, NULL, NULL));
            assert_int_equal(p[4095], (g & 0xff) | 1);
        }
        AUDIT_OK(domain_audit(rr.d));
        print_message("# foreign producer (%s): hugevm 1g %llu 2m %llu 4k %llu, freed %llu; "
                      "Xen rule 2m %llu 4k %llu\n", shuffled ? "random" : "in order",
                      (unsigned long long)rr.pages_1g, (unsigned long long)rr.pages_2m,
                      (unsigned long long)rr.pages_4k, (unsigned long long)rr.freed_pages,
                      (unsigned long long)rr.xen_2m, (unsigned long long)rr.xen_4k);
        domain_destroy(rr.d);
        restore_result_free(&rr);
        assert_machine_empty(m);
        machine_destroy(m);
        stream_mem_free(&mem);
    }
    /* Xen's rule on batches of 1024 in order: every 2M is in one record */
    for (size_t i = 0; i < n; i++)
        pfns[i] = i;
    struct stream_mem mem;
    foreign_stream(&mem, pfns, 4096, 1024, 0, 0);
    struct restore_result rr;
    struct restore_opts dry = {.dry_run = true};
    assert_int_equal(restore_from(NULL, mem.buf, mem.len, &dry, &rr), 0);
    assert_int_equal(rr.xen_2m, 8);
    assert_int_equal(rr.pages_2m, 8);
    stream_mem_free(&mem);
    free(pfns);
}

/*
 * restore_opts.xen_2025_rule allocates as Xen's restore does since 2025: a
 * 2M leaf only for a region whose 512 pfns one record holds in order, else
 * 4K, never 1G.  One 1G region and 32 2M regions (above 4G), saved in
 * ascending order in records of 1024 (every region whole in one record),
 * with the first record cut at 300 (every even region, counted over the
 * pfns sent, straddles two records), in records of 500 (none whole) and in
 * random order (none): the rule's leaves are exactly those, its own count
 * (xen_2m) agrees, while hugevm's rule restores the 1G and 2M leaves from
 * every one of these streams (from the HV_LAYOUT hint, and without it for
 * the last two).  The memory is the same either way: the same
 * digest, the same bytes as the source, audits clean.
 */
static void test_xen_2025_rule(void **state)
{
    (void)state;
    const uint64_t nr_2m = 512 + 32, n = nr_2m * 512;
    struct machine *m = new_machine(2 * GiB);
    struct domain *d = new_domain(m);
    assert_int_equal(domain_populate(d, 0x100000, n, NULL), 0);
    assert_int_equal(domain_pages_1g(d), 1);
    fill_content(d, 23, 64);
    static const struct {
        const char *what;
        struct save_opts o;
        uint64_t xen_2m; /* 2M leaves under Xen's rule */
    } cases[] = {
        {"ascending, records of 1024", {.order = SAVE_ORDER_GFN}, 512 + 32},
        {"ascending, first record 300", {.order = SAVE_ORDER_GFN, .first_batch = 300}, 272},
        {"ascending, records of 500", {.order = SAVE_ORDER_GFN, .batch = 500}, 0},
        {"random order", {.order = SAVE_ORDER_RANDOM, .seed = 11}, 0},
    };
    uint64_t digest = 0;
    for (size_t k = 0; k < ARRAY_SIZE(cases); k++) {
        struct blob b;
        struct save_result sr;
        save_to(&b, d, &cases[k].o, &sr);
        for (int xen = 0; xen < 2; xen++) {
            struct machine *m2 = new_machine(2 * GiB);
            /* hugevm's rule from the layout hint, and (k >= 2) without it */
            struct restore_opts ro = {.xen_2025_rule = xen, .digest = true,
                                      .ignore_layout = k >= 2};
            struct restore_result rr;
            int rc = restore_from(m2, b.mem.buf, b.mem.len, &ro, &rr);
            if (rc)
                fail_msg("%s (%s rule): restore: %s", cases[k].what, xen ? "Xen's" : "hugevm's",
                         rr.err);
            print_message("# %-28s %s rule: 1g %llu 2m %llu 4k %llu (Xen count 2m %llu)\n",
                          cases[k].what, xen ? "Xen's   " : "hugevm's",
                          (unsigned long long)domain_pages_1g(rr.d),
                          (unsigned long long)domain_pages_2m(rr.d),
                          (unsigned long long)domain_pages_4k(rr.d),
                          (unsigned long long)rr.xen_2m);
            if (xen) {
                assert_int_equal(domain_pages_1g(rr.d), 0);
                assert_int_equal(domain_pages_2m(rr.d), cases[k].xen_2m);
                assert_int_equal(domain_pages_4k(rr.d), n - 512 * cases[k].xen_2m);
                assert_int_equal(rr.spec_1g, 0);
                assert_int_equal(rr.freed_pages, 0); /* nothing speculative */
            } else {
                assert_int_equal(domain_pages_1g(rr.d), 1);
                assert_int_equal(domain_pages_2m(rr.d), 32);
                assert_int_equal(domain_pages_4k(rr.d), 0);
            }
            assert_int_equal(rr.xen_2m, cases[k].xen_2m);
            assert_same_content(d, rr.d);
            AUDIT_OK(domain_audit(rr.d));
            AUDIT_OK(frames_audit(m2->frames));
            assert_int_equal(rr.digest_pages, n);
            if (k == 0 && xen == 0)
                digest = rr.digest;
            assert_true(rr.digest == digest);
            domain_destroy(rr.d);
            restore_result_free(&rr);
            assert_machine_empty(m2);
            machine_destroy(m2);
        }
        stream_mem_free(&b.mem);
    }
    assert_true(migrate_digest(d, NULL) == digest);
    domain_destroy(d);
    assert_machine_empty(m);
    machine_destroy(m);
}

/*
 * Xen's rule needs the region wholly unmapped: one record of a foreign
 * producer names pfn 517 first (4K), then [0, 512) in order (one 2M leaf),
 * then [512, 1024) in order, whose region already has 517: 4K pages, none
 * merged (Xen's p2m never merges), the data of the first 517 replaced by
 * the second.  A record [1, 1024): its run misses the first pfn of
 * [0, 512), which is 4K, and holds [512, 1024) whole, which is 2M.
 */
static void test_xen_2025_rule_partial(void **state)
{
    (void)state;
    gfn_t pfns[1 + 1024];
    pfns[0] = 517;
    for (gfn_t i = 0; i < 1024; i++)
        pfns[1 + i] = i;
    for (int variant = 0; variant < 2; variant++) {
        struct stream_mem mem;
        if (variant == 0)
            foreign_stream(&mem, pfns, 1025, 1025, 0, 0);
        else
            foreign_stream(&mem, pfns + 2, 1023, 1023, 0, 0); /* [1, 1024) */
        struct machine *m = new_machine(64 * MiB);
        struct restore_opts ro = {.xen_2025_rule = true};
        struct restore_result rr;
        int rc = restore_from(m, mem.buf, mem.len, &ro, &rr);
        if (rc)
            fail_msg("restore: %s", rr.err);
        assert_int_equal(domain_pages_1g(rr.d), 0);
        assert_int_equal(domain_pages_2m(rr.d), 1);
        assert_int_equal(domain_pages_4k(rr.d), variant == 0 ? 512 : 511);
        enum p2m_type t;
        unsigned order;
        p2m_get_entry(rr.d->p2m, variant == 0 ? 0 : 512, &t, &order);
        assert_int_equal(order, PAGE_ORDER_2M);
        assert_int_equal(rr.pages_populated, variant == 0 ? 1024 : 1023);
        for (gfn_t g = 5; g < 1024; g += 5) {
            uint8_t *p = machine_ptr(m, p2m_get_entry(rr.d->p2m, g, NULL, NULL));
            assert_int_equal(p[0], (g & 0xff) | 1);
            assert_int_equal(p[4095], (g & 0xff) | 1);
        }
        AUDIT_OK(domain_audit(rr.d));
        AUDIT_OK(frames_audit(m->frames));
        domain_destroy(rr.d);
        restore_result_free(&rr);
        assert_machine_empty(m);
        machine_destroy(m);
        stream_mem_free(&mem);
    }
}

/* ---- errors ---------------------------------------------------------------------------- */

static struct blob small_stream(struct machine *m, bool no_optional)
{
    struct domain *d = new_domain(m);
    assert_int_equal(domain_populate(d, 0x100000, 2048, NULL), 0);
    assert_true(domain_decrease_reservation(d, 0x100000 + 700, 3) == 3);
    fill_content(d, 5, 7);
    struct blob b;
    struct save_opts o = {.batch = 300, .no_optional = no_optional};
    save_to(&b, d, &o, NULL);
    domain_destroy(d);
    return b;
}

static void expect_error(struct machine *m, const void *buf, size_t len, int want,
                         const char *needle)
{
    struct restore_result rr;
    int rc = restore_from(m, buf, len, NULL, &rr);
    if (rc != want)
        fail_msg("want %d (%s) got %d: %s", want, strerror(-want), rc, rr.err);
    assert_null(rr.d);
    if (needle && !strstr(rr.err, needle))
        fail_msg("error '%s' lacks '%s'", rr.err, needle);
    assert_non_null(strstr(rr.err, "offset"));
    assert_machine_empty(m);
}

/* Patch the u32 at `off` of a copy of the stream. */
static uint8_t *patched(const struct blob *b, size_t off, uint32_t v)
{
    uint8_t *p = malloc(b->mem.len);
    memcpy(p, b->mem.buf, b->mem.len);
    memcpy(p + off, &v, 4);
    return p;
}

/* Offset of the first record of `type`. */
static size_t find_record(const struct blob *b, uint32_t type)
{
    size_t off = 40;
    while (off + 8 <= b->mem.len) {
        uint32_t t, l;
        memcpy(&t, b->mem.buf + off, 4);
        memcpy(&l, b->mem.buf + off + 4, 4);
        if (t == type)
            return off;
        off += 8 + ((l + 7u) & ~7u);
    }
    fail_msg("no record %#x", type);
    return 0;
}

static void test_errors(void **state)
{
    (void)state;
    struct machine *m = new_machine(256 * MiB);
    struct blob b = small_stream(m, false);
    uint8_t *p;

    /* every truncation point of the header, each record header, a few bodies */
    for (size_t cut = 0; cut < b.mem.len; cut += cut < 64 ? 1 : 4093)
        expect_error(m, b.mem.buf, cut, -ENODATA, "truncated");
    expect_error(m, b.mem.buf, b.mem.len - 8, -ENODATA, "truncated");
    /* bad marker, id, version, options, domain type */
    p = patched(&b, 0, 0x12345678);
    expect_error(m, p, b.mem.len, -EBADMSG, "marker");
    free(p);
    p = patched(&b, 8, 0x12345678);
    expect_error(m, p, b.mem.len, -EBADMSG, "id");
    free(p);
    p = patched(&b, 12, 0x09000000);
    expect_error(m, p, b.mem.len, -EPROTONOSUPPORT, "version");
    free(p);
    p = patched(&b, 24, 1);
    expect_error(m, p, b.mem.len, -EBADMSG, "HVM");
    free(p);
    size_t pd = find_record(&b, STREAM_REC_PAGE_DATA);
    /* oversized length: refused before anything is allocated */
    p = patched(&b, pd + 4, STREAM_MAX_BODY + 8);
    expect_error(m, p, b.mem.len, -EMSGSIZE, "record #");
    free(p);
    /* count that does not match the body */
    p = patched(&b, pd + 8, 5);
    expect_error(m, p, b.mem.len, -EBADMSG, "PAGE_DATA");
    free(p);
    p = patched(&b, pd + 8, 0);
    expect_error(m, p, b.mem.len, -EBADMSG, "count is 0");
    free(p);
    /* a pfn beyond the domain (max_gfn from HV_CONFIG) and beyond 52 bits' use */
    uint64_t e;
    memcpy(&e, b.mem.buf + pd + 16, 8);
    p = malloc(b.mem.len);
    memcpy(p, b.mem.buf, b.mem.len);
    uint64_t e2 = stream_pfn_entry(0x200000, stream_entry_type(e));
    memcpy(p + pd + 16, &e2, 8);
    expect_error(m, p, b.mem.len, -ERANGE, "beyond the domain");
    /* an invalid page type */
    e2 = stream_pfn_entry(stream_entry_pfn(e), 6);
    memcpy(p + pd + 16, &e2, 8);
    expect_error(m, p, b.mem.len, -EBADMSG, "page type");
    free(p);
    /* unknown mandatory record */
    p = patched(&b, pd, 0x777);
    expect_error(m, p, b.mem.len, -ENOTSUP, "unknown mandatory");
    free(p);
    /* corrupt hugevm context (checksum) */
    size_t hc = find_record(&b, STREAM_REC_HVM_CONTEXT);
    p = malloc(b.mem.len);
    memcpy(p, b.mem.buf, b.mem.len);
    p[hc + 8 + 24 + 9] ^= 0x40;
    expect_error(m, p, b.mem.len, -EBADMSG, "checksum");
    free(p);
    stream_mem_free(&b.mem);

    /* conflicting duplicates, written by hand after a valid prefix */
    for (int variant = 0; variant < 2; variant++) {
        struct stream_mem mem;
        struct stream_io io;
        struct stream_writer w;
        stream_mem_sink(&mem, &io);
        stream_writer_init(&w, &io);
        assert_int_equal(stream_write_headers(&w), 0);
        assert_int_equal(stream_write_record(&w, STREAM_REC_STATIC_DATA_END, NULL, 0), 0);
        uint64_t rec[3] = {1 | (1ULL << 32), 0, 0};
        rec[1] = stream_pfn_entry(0x1000, variant ? STREAM_PAGE_XTAB : STREAM_PAGE_XALLOC);
        assert_int_equal(stream_write_record(&w, STREAM_REC_PAGE_DATA, rec, 16), 0);
        rec[1] = stream_pfn_entry(0x1000, variant ? STREAM_PAGE_XALLOC : STREAM_PAGE_XTAB);
        assert_int_equal(stream_write_record(&w, STREAM_REC_PAGE_DATA, rec, 16), 0);
        assert_int_equal(stream_write_record(&w, STREAM_REC_END, NULL, 0), 0);
        expect_error(m, mem.buf, mem.len, -EEXIST, "record #2 PAGE_DATA");
        /* and a foreign stream beyond the caller's limit */
        struct restore_result rr;
        struct restore_opts ro = {.max_gfn = 0x800};
        assert_int_equal(restore_from(m, mem.buf, mem.len, &ro, &rr), -ERANGE);
        assert_machine_empty(m);
        stream_mem_free(&mem);
    }
    machine_destroy(m);
}

/* Restore `b` with the n-th allocation failing, for n = 1, 2, ... (every
 * `stride`-th after the first 64) until no fault fires: the restore either
 * succeeds (a superpage fell back) with the right content, or fails with
 * nothing allocated. */
static void fault_loop(struct machine *m, struct domain *src, const struct blob *b,
                       long stride, unsigned long *failed, unsigned long *succeeded)
{
    for (long n = 1;; n += n < 64 ? 1 : stride) {
        unsigned long hits = hv_fault_hits;
        fault_arm(n, FAULT_SITE_ALL);
        struct restore_result rr;
        int rc = restore_from(m, b->mem.buf, b->mem.len, NULL, &rr);
        fault_disarm();
        bool fired = hv_fault_hits != hits;
        if (rc == 0) {
            AUDIT_OK(domain_audit(rr.d));
            static uint8_t zero[PAGE_SIZE];
            struct cmp_ctx c = {.dst = rr.d};
            c.hs = (struct hasher){.m = m, .zero_hash = XXH64(zero, PAGE_SIZE, 0)};
            c.hd = c.hs;
            assert_int_equal(p2m_for_each_leaf(src->p2m, 0, P2M_GFN_LIMIT, cmp_leaf, &c), 0);
            assert_int_equal(rr.d->tot_pages, src->tot_pages);
            domain_destroy(rr.d);
            restore_result_free(&rr);
            (*succeeded)++;
        } else {
            if (rc != -ENOMEM)
                fail_msg("n=%ld: %d %s", n, rc, rr.err);
            assert_non_null(strstr(rr.err, "offset"));
            (*failed)++;
        }
        assert_int_equal(frames_owned(m->frames, rr.domid), 0);
        AUDIT_OK(frames_audit(m->frames));
        if (!fired)
            break;
    }
}

/* Allocation failure at every site (frames, p2m tables, metadata). */
static void test_fault_injection(void **state)
{
    (void)state;
    unsigned long failed = 0, succeeded = 0;
    /* every allocation of a small guest with holes and 2M extents */
    struct machine *m = new_machine(64 * MiB);
    struct domain *d = new_domain(m);
    assert_int_equal(domain_populate(d, 0x1000, 4096, NULL), 0);
    assert_true(domain_decrease_reservation(d, 0x1000 + 600, 2) == 2);
    fill_content(d, 6, 13);
    struct blob b;
    struct save_opts so = {.batch = 700};
    save_to(&b, d, &so, NULL);
    fault_loop(m, d, &b, 1, &failed, &succeeded);
    so.no_optional = true;
    stream_mem_free(&b.mem);
    save_to(&b, d, &so, NULL);
    fault_loop(m, d, &b, 1, &failed, &succeeded);
    stream_mem_free(&b.mem);
    /* save under allocation failure: an error, never a crash */
    for (long n = 1;; n++) {
        unsigned long hits = hv_fault_hits;
        struct blob b2;
        stream_mem_sink(&b2.mem, &b2.io);
        fault_arm(n, FAULT_SITE_MEM);
        int rc = stream_save(d, &b2.io, &so, NULL, NULL, 0);
        fault_disarm();
        stream_mem_free(&b2.mem);
        if (hv_fault_hits == hits) {
            assert_int_equal(rc, 0);
            break;
        }
        assert_int_equal(rc, -ENOMEM);
    }
    down_guest(d, m);
    /* a 1G region (speculative 1G, split on free), sampled */
    m = new_machine(2 * GiB);
    d = new_domain(m);
    assert_int_equal(domain_populate(d, 1u << 18, (1u << 18) + 1024, NULL), 0);
    assert_true(domain_decrease_reservation(d, (1u << 18) + 5000, 1) == 1);
    fill_content(d, 7, 4001);
    so.batch = 0;
    save_to(&b, d, &so, NULL);
    fault_loop(m, d, &b, 61, &failed, &succeeded);
    print_message("# fault injection: %lu restores failed cleanly, %lu succeeded after a fallback\n",
                  failed, succeeded);
    assert_true(failed > 10);
    stream_mem_free(&b.mem);
    down_guest(d, m);
}

/* Save to a file and restore from it through the fd source; extra TLVs
 * for the vCPU layer travel in HVM_CONTEXT. */
static void test_file_and_context(void **state)
{
    (void)state;
    struct machine *m = new_machine(2 * GiB);
    struct domain *d = new_guest(m, 96 * MiB);
    fill_content(d, 8, 5);
    FILE *tf = tmpfile();
    assert_non_null(tf);
    int fd = fileno(tf);
    struct stream_fd sf;
    struct stream_io io;
    assert_int_equal(stream_fd_open(&sf, &io, fd), 0);
    uint8_t tlv[16] = {HVCTX_VCPU, 0, 0, 0, 5, 0, 0, 0, 'v', 'c', 'p', 'u', '0'};
    struct save_opts o = {.extra_tlvs = tlv, .extra_tlvs_len = sizeof(tlv)};
    char err[256];
    struct save_result sr;
    assert_int_equal(stream_save(d, &io, &o, &sr, err, sizeof(err)), 0);
    stream_fd_free(&sf);
    assert_int_equal((uint64_t)lseek(fd, 0, SEEK_END), sr.bytes);
    assert_int_equal(lseek(fd, 0, SEEK_SET), 0);
    assert_int_equal(stream_fd_open(&sf, &io, fd), 0);
    struct machine *m2 = new_machine(2 * GiB);
    struct restore_result rr;
    int rc = stream_restore(m2, &io, NULL, &rr);
    if (rc)
        fail_msg("%s", rr.err);
    stream_fd_free(&sf);
    fclose(tf);
    assert_same_guest(d, rr.d);
    assert_int_equal(rr.vcpu, RESTORE_VCPU_HUGEVM);
    assert_true(rr.have_config);
    assert_int_equal(rr.config.max_pages, d->max_pages);
    assert_int_equal(rr.d->max_pages, d->max_pages);
    /* the context keeps every TLV: CONFIG first, the vCPU one last */
    assert_true(rr.context_len >= sizeof(tlv));
    assert_memory_equal(rr.context + rr.context_len - sizeof(tlv), tlv, sizeof(tlv));
    domain_destroy(rr.d);
    restore_result_free(&rr);
    assert_machine_empty(m2);
    machine_destroy(m2);
    down_guest(d, m);
}

/* A stream file is read through a mapping: from the fd's offset (bytes
 * before it are not the stream), into a resident machine, and the fd's
 * offset ends just after END.  Raw reads see a file that grows, and a pipe
 * is read with read(). */
static void test_fd_source(void **state)
{
    (void)state;
    struct machine *m = new_machine(GiB);
    struct domain *d = new_guest(m, 40 * MiB);
    fill_content(d, 3, 3);
    FILE *tf = tmpfile();
    assert_non_null(tf);
    int fd = fileno(tf);
    static const char junk[100] = "not a stream";
    assert_int_equal(write(fd, junk, sizeof(junk)), (ssize_t)sizeof(junk));
    struct stream_fd sf;
    struct stream_io io;
    struct save_result sr;
    assert_int_equal(stream_fd_open(&sf, &io, fd), 0);
    assert_int_equal(stream_save(d, &io, NULL, &sr, NULL, 0), 0);
    stream_fd_free(&sf);
    assert_int_equal(write(fd, "trailing", 8), 8);
    assert_int_equal(lseek(fd, sizeof(junk), SEEK_SET), (off_t)sizeof(junk));
    struct machine *rm;
    struct machine_opts mo = {.bytes = 128 * MiB, .policy = FRAME_POLICY_FRAGPOOL,
                              .resident = true};
    assert_int_equal(machine_create_opts(&rm, &mo), 0);
    assert_int_equal(stream_fd_open(&sf, &io, fd), 0);
    struct restore_result rr;
    int rc = stream_restore(rm, &io, NULL, &rr);
    if (rc)
        fail_msg("%s", rr.err);
    assert_int_equal(sf.mapped, 1);
    stream_fd_free(&sf);
    assert_int_equal((uint64_t)lseek(fd, 0, SEEK_CUR), sizeof(junk) + sr.bytes);
    assert_same_guest(d, rr.d);
    domain_destroy(rr.d);
    restore_result_free(&rr);
    assert_machine_empty(rm);
    assert_int_equal(machine_resident_bytes(rm), 128 * MiB);
    machine_destroy(rm);

    /* raw reads: the end of the file, then more once it has grown */
    assert_int_equal(ftruncate(fd, 0), 0);
    assert_int_equal(pwrite(fd, "0123456789", 10, 0), 10);
    assert_int_equal(lseek(fd, 2, SEEK_SET), 2);
    assert_int_equal(stream_fd_open(&sf, &io, fd), 0);
    char buf[64];
    assert_int_equal(io.read(io.ctx, buf, sizeof(buf)), 8);
    assert_memory_equal(buf, "23456789", 8);
    assert_int_equal(io.read(io.ctx, buf, sizeof(buf)), 0);
    assert_int_equal(pwrite(fd, "abcde", 5, 10), 5);
    assert_int_equal(io.read(io.ctx, buf, 3), 3);
    assert_memory_equal(buf, "abc", 3);
    stream_fd_free(&sf);
    assert_int_equal(lseek(fd, 0, SEEK_CUR), 13);
    fclose(tf);

    /* a pipe is not mapped */
    int p[2];
    assert_int_equal(pipe(p), 0);
    assert_int_equal(write(p[1], "xyz", 3), 3);
    close(p[1]);
    assert_int_equal(stream_fd_open(&sf, &io, p[0]), 0);
    assert_int_equal(io.read(io.ctx, buf, sizeof(buf)), 3);
    assert_int_equal(io.read(io.ctx, buf, sizeof(buf)), 0);
    assert_int_equal(sf.mapped, -1);
    stream_fd_free(&sf);
    close(p[0]);
    down_guest(d, m);
}

/* A memfd of `bytes` mapped shared: the alias of stream_fd_alias. */
static uint8_t *alias_memfd(uint64_t bytes, int *fd)
{
    *fd = memfd_create("test-alias", MFD_CLOEXEC);
    assert_true(*fd >= 0);
    assert_int_equal(ftruncate(*fd, (off_t)bytes), 0);
    void *p = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, *fd, 0);
    assert_true(p != MAP_FAILED);
    return p;
}

static void pattern(uint8_t *p, size_t len, uint64_t seed)
{
    struct hv_rng r = {seed};
    for (size_t i = 0; i + 8 <= len; i += 8) {
        uint64_t x = hv_rng_next(&r);
        memcpy(p + i, &x, 8);
    }
}

/* Read all of fd from offset 0 into a new buffer of *len bytes. */
static uint8_t *slurp(int fd, size_t *len)
{
    off_t end = lseek(fd, 0, SEEK_END);
    assert_true(end >= 0);
    uint8_t *b = malloc((size_t)end + 1);
    assert_non_null(b);
    assert_int_equal(pread(fd, b, (size_t)end, 0), end);
    *len = (size_t)end;
    return b;
}

/* stream_fd_alias, the sink: large writes inside the alias go out with
 * sendfile (alias_bytes counts them), small ones, ones outside it and one
 * that crosses its end go the ordinary way, and the file holds every byte
 * in order.  A sink that sendfile cannot write (O_APPEND) drops the alias
 * and still gets every byte. */
static void test_fd_alias_write(void **state)
{
    (void)state;
    const uint64_t map = 4 * MiB, alias = 3 * MiB;
    int afd;
    uint8_t *base = alias_memfd(map, &afd);
    pattern(base, map, 11);
    uint8_t *other = malloc(128 * KiB);
    assert_non_null(other);
    pattern(other, 128 * KiB, 12);
    for (int append = 0; append < 2; append++) {
        FILE *tf = tmpfile();
        assert_non_null(tf);
        int fd = fileno(tf);
        if (append)
            assert_int_equal(fcntl(fd, F_SETFL, O_APPEND), 0);
        struct stream_fd sf;
        struct stream_io io;
        assert_int_equal(stream_fd_open(&sf, &io, fd), 0);
        stream_fd_alias(&sf, base, alias, afd);
        struct { const uint8_t *p; size_t len; bool moved; } w[] = {
            {(const uint8_t *)"head", 4, false},               /* buffered */
            {base + 4096, MiB, true},                          /* sendfile */
            {other, 128 * KiB, false},                         /* outside: writev */
            {base + 2 * MiB + 8, MiB - 8, true},               /* up to the alias's end */
            {base + 7, 100, false},                            /* small: buffered */
            {base + alias - 64 * KiB, 128 * KiB, false},       /* crosses the end */
            {base, 64 * KiB, true},                            /* exactly STREAM_FD_DIRECT */
        };
        uint64_t moved = 0, total = 0;
        for (size_t i = 0; i < ARRAY_SIZE(w); i++) {
            assert_int_equal(io.write(io.ctx, w[i].p, w[i].len), 0);
            moved += w[i].moved ? w[i].len : 0;
            total += w[i].len;
        }
        assert_int_equal(io.flush(io.ctx), 0);
        print_message("# alias sink%s: %llu of %llu bytes moved by sendfile\n",
                      append ? " (O_APPEND)" : "", (unsigned long long)sf.alias_bytes,
                      (unsigned long long)total);
        if (append) {
            assert_int_equal(sf.alias_bytes, 0);
            assert_int_equal(sf.alias_len, 0); /* dropped at the first refusal */
        } else {
            assert_int_equal(sf.alias_bytes, moved);
        }
        stream_fd_free(&sf);
        size_t len;
        uint8_t *got = slurp(fd, &len);
        assert_int_equal(len, total);
        size_t at = 0;
        for (size_t i = 0; i < ARRAY_SIZE(w); i++) {
            assert_memory_equal(got + at, w[i].p, w[i].len);
            at += w[i].len;
        }
        free(got);
        fclose(tf);
    }
    free(other);
    munmap(base, map);
    close(afd);
}

/* stream_fd_alias, the source: a large read into the alias from a mapped
 * file comes in with splice (the bytes land in the alias file, seen
 * through its mapping), a small one through the buffer, and the fd's
 * offset ends where the reader stopped.  A file cut short while it is
 * read ends the stream where it now ends (short read, then 0), as without
 * an alias, and without a SIGBUS: splice finds the new end before the
 * mapping is touched there. */
static void test_fd_alias_read(void **state)
{
    (void)state;
    const uint64_t map = 4 * MiB;
    int afd;
    uint8_t *base = alias_memfd(map, &afd);
    const size_t body = 2 * MiB + 4096;
    uint8_t *src = malloc(body);
    assert_non_null(src);
    pattern(src, body, 21);
    for (int cut = 0; cut < 2; cut++) {
        memset(base, 0, map);
        FILE *tf = tmpfile();
        assert_non_null(tf);
        int fd = fileno(tf);
        assert_int_equal(write(fd, "0123456789", 10), 10);
        assert_int_equal(write(fd, src, body), (ssize_t)body);
        assert_int_equal(lseek(fd, 3, SEEK_SET), 3);
        struct stream_fd sf;
        struct stream_io io;
        assert_int_equal(stream_fd_open(&sf, &io, fd), 0);
        stream_fd_alias(&sf, base, map, afd);
        char head[8];
        assert_int_equal(io.read(io.ctx, head, 7), 7); /* maps the file */
        assert_memory_equal(head, "3456789", 7);
        assert_int_equal(sf.mapped, 1);
        size_t want = cut ? MiB : body;
        if (cut)
            assert_int_equal(ftruncate(fd, 10 + (off_t)want), 0);
        uint8_t *dst = base + 8192 + 8; /* not page aligned in the alias file */
        size_t got = 0;
        for (;;) {
            long n = io.read(io.ctx, dst + got, body - got);
            assert_true(n >= 0);
            if (n == 0)
                break;
            got += (size_t)n;
        }
        print_message("# alias source%s: %zu bytes read, %llu moved by splice, %u SIGBUS\n",
                      cut ? " (file cut)" : "", got, (unsigned long long)sf.alias_bytes,
                      sf.bus_faults);
        assert_int_equal(got, want);
        assert_memory_equal(dst, src, want);
        assert_int_equal(sf.alias_bytes, want);
        assert_true(sf.alias_len > 0);
        assert_int_equal(sf.bus_faults, 0); /* splice saw the end: the mapping was not read */
        stream_fd_free(&sf);
        assert_int_equal(lseek(fd, 0, SEEK_CUR), 10 + (off_t)want);
        fclose(tf);
    }
    free(src);
    munmap(base, map);
    close(afd);
}

/* Save and restore through files with each machine's memfd as the alias
 * (what hugevm save and restore do): the page data goes through the
 * kernel both ways, the checksum verifies and the guest is the same. */
static void test_fd_alias_round_trip(void **state)
{
    (void)state;
    struct machine *m = new_machine(GiB);
    struct domain *d = new_guest(m, 40 * MiB);
    fill_content(d, 9, 1); /* every page has data */
    FILE *tf = tmpfile();
    assert_non_null(tf);
    int fd = fileno(tf);
    struct stream_fd sf;
    struct stream_io io;
    struct save_result sr;
    assert_int_equal(stream_fd_open(&sf, &io, fd), 0);
    stream_fd_alias(&sf, m->base, m->bytes, m->fd);
    assert_int_equal(stream_save(d, &io, NULL, &sr, NULL, 0), 0);
    uint64_t sent = sf.alias_bytes;
    stream_fd_free(&sf);
    assert_int_equal((uint64_t)lseek(fd, 0, SEEK_END), sr.bytes);
    struct machine *rm;
    struct machine_opts mo = {.bytes = 128 * MiB, .policy = FRAME_POLICY_FRAGPOOL,
                              .resident = true};
    assert_int_equal(machine_create_opts(&rm, &mo), 0);
    assert_int_equal(lseek(fd, 0, SEEK_SET), 0);
    assert_int_equal(stream_fd_open(&sf, &io, fd), 0);
    stream_fd_alias(&sf, rm->base, rm->bytes, rm->fd);
    struct restore_opts ro = {.verify_checksum = true};
    struct restore_result rr;
    int rc = stream_restore(rm, &io, &ro, &rr);
    if (rc)
        fail_msg("%s", rr.err);
    uint64_t received = sf.alias_bytes;
    stream_fd_free(&sf);
    fclose(tf);
    print_message("# %llu data pages: %llu bytes sent and %llu received by the kernel\n",
                  (unsigned long long)sr.pages_data, (unsigned long long)sent,
                  (unsigned long long)received);
    /* most data pages travel in machine-contiguous runs of 64 KiB or more */
    assert_true(sent >= sr.pages_data * PAGE_SIZE / 2 && sent <= sr.pages_data * PAGE_SIZE);
    assert_true(received >= sr.pages_data * PAGE_SIZE / 2 &&
                received <= sr.pages_data * PAGE_SIZE);
    assert_true(rr.checksum_verified);
    assert_same_guest(d, rr.d);
    domain_destroy(rr.d);
    restore_result_free(&rr);
    assert_machine_empty(rm);
    machine_destroy(rm);
    down_guest(d, m);
}

/* restore_opts.track_data: every RAM pfn whose bit is clear reads as zero,
 * the bits count the data pages, and the digest that trusts them equals
 * the one that reads everything, on a resident machine (no holes there). */
static void test_track_data(void **state)
{
    (void)state;
    struct machine *m = new_machine(GiB);
    struct domain *d = new_guest(m, 64 * MiB);
    fill_content(d, 17, 5); /* one page in 5 holds data */
    struct stream_mem sm;
    struct stream_io io;
    struct save_result sr;
    stream_mem_sink(&sm, &io);
    assert_int_equal(stream_save(d, &io, NULL, &sr, NULL, 0), 0);
    struct machine *rm;
    struct machine_opts mo = {.bytes = 256 * MiB, .policy = FRAME_POLICY_FRAGPOOL,
                              .resident = true};
    assert_int_equal(machine_create_opts(&rm, &mo), 0);
    struct stream_mem src;
    stream_mem_source(&src, &io, sm.buf, sm.len);
    struct restore_opts ro = {.track_data = true};
    struct restore_result rr;
    int rc = stream_restore(rm, &io, &ro, &rr);
    if (rc)
        fail_msg("%s", rr.err);
    assert_non_null(rr.data_bits);
    uint64_t set = 0, checked = 0;
    for (gfn_t g = 0; g < rr.data_bits_nr; g++) {
        bool bit = rr.data_bits[g / 64] >> (g % 64) & 1;
        set += bit;
        enum p2m_type t;
        mfn_t mfn = p2m_get_entry(rr.d->p2m, g, &t, NULL);
        if (!p2m_is_ram(t) || bit)
            continue;
        const uint64_t *w = machine_ptr(rm, mfn);
        for (unsigned i = 0; i < PAGE_SIZE / 8; i++)
            if (w[i])
                fail_msg("pfn %#llx has no data bit but is not zero", (unsigned long long)g);
        checked++;
    }
    assert_int_equal(set, rr.pages_data);
    assert_int_equal(set, sr.pages_data);
    assert_true(checked > 0);
    uint64_t p1, p2;
    assert_true(migrate_digest_known(rr.d, rr.data_bits, rr.data_bits_nr, &p1) ==
                migrate_digest(rr.d, &p2));
    assert_int_equal(p1, p2);
    assert_true(migrate_digest(rr.d, NULL) == migrate_digest(d, NULL));
    domain_destroy(rr.d);
    restore_result_free(&rr);
    assert_null(rr.data_bits);
    assert_machine_empty(rm);
    machine_destroy(rm);
    stream_mem_free(&sm);
    down_guest(d, m);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_wire_format),
        cmocka_unit_test(test_round_trip_orders),
        cmocka_unit_test(test_round_trip_holes),
        cmocka_unit_test(test_round_trip_big),
        cmocka_unit_test(test_round_trip_random),
        cmocka_unit_test(test_foreign_producer),
        cmocka_unit_test(test_xen_2025_rule),
        cmocka_unit_test(test_xen_2025_rule_partial),
        cmocka_unit_test(test_errors),
        cmocka_unit_test(test_fault_injection),
        cmocka_unit_test(test_file_and_context),
        cmocka_unit_test(test_fd_source),
        cmocka_unit_test(test_fd_alias_write),
        cmocka_unit_test(test_fd_alias_read),
        cmocka_unit_test(test_fd_alias_round_trip),
        cmocka_unit_test(test_track_data),
    };
    hv_test_filter();
    return cmocka_run_group_tests(tests, NULL, NULL);
}
