/*
 * gen_seeds.c - write the seed corpus of the stream fuzzer: small valid
 * streams of every shape hugevm reads (with and without optional records,
 * holes, PoD, 4K-only ranges, split extents, reverse order, a foreign
 * producer's opaque HVM_CONTEXT), and the hostile shapes of issue 12
 * scaled to the fuzzer's 1 MiB inputs: XTAB entries one per 1G region,
 * XALLOC sparse over a huge range, pages beyond max_pages, a GUEST_MEM
 * over the whole pfn space with zipf, a flipped pfn bit and a flipped data
 * byte under HV_CHECKSUM; and a KVM guest's vCPUs (PROG_VCPU with its
 * PROG_XSAVE and PROG_MSRS), so that the fuzzer reaches their decoder.
 * Usage: gen_seeds DIR.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <endian.h>

#include "guest.h"
#include "guest_state.h"
#include "migrate.h"
#include "save.h"

static int write_file(const char *dir, const char *name, const void *p, size_t n)
{
    char path[512];
    snprintf(path, sizeof(path), "%s/%s", dir, name);
    FILE *f = fopen(path, "wb");
    if (!f || fwrite(p, 1, n, f) != n) {
        perror(path);
        return 1;
    }
    return fclose(f) != 0;
}

static int save_seed(const char *dir, const char *name, struct domain *d,
                     const struct save_opts *o)
{
    struct stream_mem mem;
    struct stream_io io;
    char err[256];
    stream_mem_sink(&mem, &io);
    if (stream_save(d, &io, o, NULL, err, sizeof(err)) < 0) {
        fprintf(stderr, "gen_seeds: %s: %s\n", name, err);
        return 1;
    }
    int rc = write_file(dir, name, mem.buf, mem.len);
    stream_mem_free(&mem);
    return rc;
}

/* A CONFIG TLV. */
static int cfg_tlv(struct hvctx_buf *b, uint64_t max_pages, uint64_t max_gfn, uint64_t tot)
{
    struct hvctx_config c = {htole64(max_pages), htole64(max_gfn), 0, htole64(tot), 0, 0};
    return hvctx_add(b, HVCTX_CONFIG, 0, &c, sizeof(c));
}

/* Headers, HV_CONFIG, STATIC_DATA_END, one PAGE_DATA of n entries
 * (pfn = i * stride, type t, no data), HVM_CONTEXT holding CONFIG plus
 * `extra` TLVs, HV_CHECKSUM, END. */
static int hostile_seed(const char *dir, const char *name, uint64_t max_pages, uint64_t max_gfn,
                        uint64_t tot, uint32_t n, uint64_t stride, unsigned t,
                        const struct hvctx_buf *extra)
{
    struct stream_mem mem;
    struct stream_io io;
    struct stream_writer w;
    struct hvctx_buf b;
    int rc = 0;
    stream_mem_sink(&mem, &io);
    stream_writer_init(&w, &io);
    stream_writer_hash(&w);
    uint32_t hdr[2] = {htole32(n), 0};
    if (hvctx_begin(&b) || cfg_tlv(&b, max_pages, max_gfn, tot))
        return 1;
    hvctx_finish(&b);
    rc |= stream_write_headers(&w);
    rc |= stream_write_record(&w, STREAM_REC_HV_CONFIG, b.p, (uint32_t)b.len);
    rc |= stream_write_record(&w, STREAM_REC_STATIC_DATA_END, NULL, 0);
    rc |= stream_record_begin(&w, STREAM_REC_PAGE_DATA, 8 + 8 * n);
    rc |= stream_write_part(&w, hdr, 8);
    for (uint32_t i = 0; i < n && rc == 0; i++) {
        uint64_t e = htole64(stream_pfn_entry(i * stride, t));
        rc |= stream_write_part(&w, &e, 8);
    }
    rc |= stream_record_end(&w);
    /* HVM_CONTEXT: CONFIG again, then the extra TLVs */
    struct hvctx_buf x;
    if (hvctx_begin(&x) || cfg_tlv(&x, max_pages, max_gfn, tot))
        return 1;
    size_t more = extra ? extra->len - sizeof(struct hvctx_header) : 0;
    for (size_t off = 0; off < more;) {
        const uint8_t *at = extra->p + sizeof(struct hvctx_header) + off;
        struct hvctx_tlv tl;
        memcpy(&tl, at, sizeof(tl));
        uint32_t l = le32toh(tl.length);
        if (hvctx_add(&x, le16toh(tl.type), le16toh(tl.flags), at + sizeof(tl), l))
            return 1;
        off += sizeof(tl) + ((l + 7u) & ~7u);
    }
    hvctx_finish(&x);
    rc |= stream_write_record(&w, STREAM_REC_HVM_CONTEXT, x.p, (uint32_t)x.len);
    hvctx_free(&x);
    rc |= stream_write_checksum(&w);
    rc |= stream_write_record(&w, STREAM_REC_END, NULL, 0);
    hvctx_free(&b);
    if (rc) {
        fprintf(stderr, "gen_seeds: %s: writing failed\n", name);
        return 1;
    }
    rc = write_file(dir, name, mem.buf, mem.len);
    stream_mem_free(&mem);
    return rc;
}

/* The first PAGE_DATA record's entries and data of a stream. */
static size_t first_entries(const uint8_t *p, size_t len, size_t *data)
{
    size_t off = 40;
    while (off + 16 <= len) {
        uint32_t t, l, n;
        memcpy(&t, p + off, 4);
        memcpy(&l, p + off + 4, 4);
        if (t == STREAM_REC_PAGE_DATA) {
            memcpy(&n, p + off + 8, 4);
            *data = off + 16 + 8ULL * n;
            return off + 16;
        }
        off += 8 + ((l + 7u) & ~7u);
    }
    return 0;
}

/* d saved, then one bit of a populated pfn entry and one byte of page data
 * flipped (two seeds). */
static int flipped_seeds(const char *dir, struct domain *d)
{
    struct stream_mem mem;
    struct stream_io io;
    char err[256];
    struct save_opts o = {.batch = 200};
    stream_mem_sink(&mem, &io);
    if (stream_save(d, &io, &o, NULL, err, sizeof(err)) < 0)
        return 1;
    size_t data, ent = first_entries(mem.buf, mem.len, &data);
    int rc = 1;
    for (size_t k = 0; ent && ent + 8 * k < data; k++) {
        uint64_t e;
        memcpy(&e, mem.buf + ent + 8 * k, 8);
        if (stream_entry_type(le64toh(e)) != STREAM_PAGE_XTAB) {
            mem.buf[ent + 8 * k] ^= 1;
            rc = write_file(dir, "hostile_flipped_pfn", mem.buf, mem.len);
            mem.buf[ent + 8 * k] ^= 1;
            break;
        }
    }
    if (rc == 0 && data + 4096 <= mem.len) {
        mem.buf[data + 7] ^= 0x10;
        rc = write_file(dir, "hostile_flipped_data", mem.buf, mem.len);
    }
    stream_mem_free(&mem);
    return rc;
}

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: gen_seeds DIR\n");
        return 2;
    }
    struct machine *m;
    struct domain *d;
    struct domain_config c;
    if (machine_create(&m, 64 * MiB, FRAME_POLICY_FRAGPOOL) < 0)
        return 1;
    domain_config_default(&c);
    c.nr_4k_ranges = 1;
    c.ranges_4k[0] = (struct gfn_range){0x600, 16};
    if (domain_create(m, &c, &d) < 0)
        return 1;
    /* 4K pages round the VGA hole, one 2M extent, a 4K-only range, a
     * ballooned page, PoD entries; two pages of data */
    if (domain_populate(d, 0x90, 0x40, NULL) < 0 || domain_populate(d, 0x200, 0x200, NULL) < 0 ||
        domain_populate(d, 0x600, 0x20, NULL) < 0 ||
        domain_decrease_reservation(d, 0x210, 1) != 1 ||
        domain_populate_flags(d, 0x800, 0x203, DOMAIN_POPULATE_POD, NULL) < 0)
        return 1;
    enum p2m_type t;
    memset(machine_ptr(m, p2m_get_entry(d->p2m, 0x95, &t, NULL)), 0x5a, 100);
    memset(machine_ptr(m, p2m_get_entry(d->p2m, 0x3ff, &t, NULL)), 0xa5, 4096);
    int rc = 0;
    struct save_opts o = {.batch = 200};
    rc |= save_seed(argv[1], "hugevm_full", d, &o);
    o.no_optional = true;
    rc |= save_seed(argv[1], "hugevm_no_optional", d, &o);
    o.order = SAVE_ORDER_REVERSE;
    o.batch = 77;
    o.first_batch = 5;
    rc |= save_seed(argv[1], "hugevm_reverse_split", d, &o);
    o = (struct save_opts){.order = SAVE_ORDER_RANDOM, .seed = 3, .batch = 300};
    rc |= save_seed(argv[1], "hugevm_random", d, &o);

    /* a KVM guest's two vCPUs: PROG_VCPU, PROG_XSAVE and PROG_MSRS each */
    struct hvctx_buf kv;
    struct hvctx_prog_ext *ext = calloc(1, sizeof(*ext));
    if (!ext || hvctx_begin(&kv))
        return 1;
    for (unsigned v = 0; v < 2; v++) {
        struct hvctx_prog_vcpu pv;
        memset(&pv, 0, sizeof(pv));
        pv.vcpu = v;
        pv.nr_vcpus = 2;
        pv.backend = GUEST_BACKEND_KVM;
        pv.guest_page_order = PAGE_ORDER_2M;
        if (hvctx_add(&kv, HVCTX_PROG_VCPU, HVCTX_F_CRITICAL, &pv, sizeof(pv)))
            return 1;
    }
    for (unsigned v = 0; v < 2; v++) {
        memset(ext, 0, sizeof(*ext));
        ext->xsave_len = 4096;
        uint32_t mxcsr = htole32(0x1f80);
        uint64_t bv = htole64(7);
        memset(ext->xsave + 160, 0x3c + (int)v, 256); /* xmm0-15 */
        memcpy(ext->xsave + 24, &mxcsr, 4);
        memcpy(ext->xsave + 512, &bv, 8);
        ext->nr_xcrs = 1;
        ext->xcrs[0] = (struct hvctx_reg){0, 0, 7};
        ext->nr_msrs = 3;
        ext->msrs[0] = (struct hvctx_reg){HVCTX_MSR_IA32_TSC, 0, 1ULL << 40};
        ext->msrs[1] = (struct hvctx_reg){0x277u, 0, 0x0007040600070406ULL};
        ext->msrs[2] = (struct hvctx_reg){0xc0000082u, 0, 0xffffffff81000000ULL};
        if (guest_state_prog_ext_encode(&kv, v, ext))
            return 1;
    }
    o = (struct save_opts){.batch = 200, .extra_tlvs = kv.p + sizeof(struct hvctx_header),
                           .extra_tlvs_len = kv.len - sizeof(struct hvctx_header)};
    rc |= save_seed(argv[1], "hugevm_kvm_vcpus", d, &o);
    hvctx_free(&kv);
    free(ext);

    /* a post-copy sender's copy in doubt: a POSTCOPY TLV naming some of
     * the domain's RAM pfns above the system area (migrate.h) */
    {
        struct hvctx_buf pb;
        uint64_t pend[128] = {0};
        for (gfn_t g = HVG_SYSTEM_END >> PAGE_SHIFT; g < 64 * 128; g += 37) {
            enum p2m_type t;
            (void)p2m_get_entry(d->p2m, g, &t, NULL);
            if (p2m_is_ram(t))
                pend[g / 64] |= 1ULL << (g % 64);
        }
        struct migrate_pc_state ps = {0x5eed, 1, 2, 64 * 128, pend};
        if (hvctx_begin(&pb) || migrate_pc_state_encode(&ps, &pb))
            return 1;
        o = (struct save_opts){.batch = 500, .extra_tlvs = pb.p + sizeof(struct hvctx_header),
                               .extra_tlvs_len = pb.len - sizeof(struct hvctx_header)};
        rc |= save_seed(argv[1], "hugevm_postcopy_doubt", d, &o);
        hvctx_free(&pb);
    }

    /* a foreign producer: no hugevm records, an opaque HVM_CONTEXT */
    struct stream_mem mem;
    struct stream_io io;
    struct stream_writer w;
    stream_mem_sink(&mem, &io);
    stream_writer_init(&w, &io);
    uint64_t pd[1 + 40];
    uint32_t *hdr = (uint32_t *)pd;
    hdr[0] = 40;
    hdr[1] = 0;
    for (unsigned i = 0; i < 40; i++)
        pd[1 + i] = stream_pfn_entry(0x1000 + i, i == 3 ? STREAM_PAGE_XTAB : STREAM_PAGE_XALLOC);
    struct stream_x86_tsc_info tsc = {0};
    uint64_t params[3] = {1, 4, 1};
    if (stream_write_headers(&w) || stream_write_record(&w, STREAM_REC_STATIC_DATA_END, NULL, 0) ||
        stream_write_record(&w, STREAM_REC_PAGE_DATA, pd, sizeof(pd)) ||
        stream_write_record(&w, STREAM_REC_X86_TSC_INFO, &tsc, sizeof(tsc)) ||
        stream_write_record(&w, STREAM_REC_HVM_PARAMS, params, sizeof(params)) ||
        stream_write_record(&w, STREAM_REC_HVM_CONTEXT, "opaque", 6) ||
        stream_write_record(&w, STREAM_REC_END, NULL, 0))
        return 1;
    rc |= write_file(argv[1], "foreign", mem.buf, mem.len);
    stream_mem_free(&mem);

    /* hostile shapes (issue 12), under 1 MiB each */
    rc |= flipped_seeds(argv[1], d);
    rc |= hostile_seed(argv[1], "hostile_xtab_per_1g", 1, P2M_GFN_LIMIT, 0, 1u << 16,
                       4ULL << PAGE_ORDER_1G, STREAM_PAGE_XTAB, NULL);
    rc |= hostile_seed(argv[1], "hostile_xalloc_sparse", 4096, P2M_GFN_LIMIT, 4096, 4096,
                       16ULL << PAGE_ORDER_1G, STREAM_PAGE_XALLOC, NULL);
    rc |= hostile_seed(argv[1], "hostile_beyond_max_pages", 512, 0x10000, 512, 1024, 1,
                       STREAM_PAGE_XALLOC, NULL);
    struct hvctx_buf gm;
    struct mig_vcpu_tlv vt = {0, htole32(1), 0, 0, {htole32(64), htole32(32), 0},
                              {htole32(4), htole32(4), htole32(4)}};
    struct mig_workload_tlv wt = {0, htole32(WL_ZIPF), 0, 0, htole64(1), 0,
                                  htole64(0xbff0000000000000ULL), 0, 0, htole64(7), 0, 0, 0,
                                  0, 0};
    uint64_t span[3] = {htole64(1), 0, htole64(P2M_GFN_LIMIT)};
    if (hvctx_begin(&gm) || hvctx_add(&gm, HVCTX_VCPU, 0, &vt, sizeof(vt)) ||
        hvctx_add(&gm, HVCTX_WORKLOAD, 0, &wt, sizeof(wt)) ||
        hvctx_add(&gm, HVCTX_GUEST_MEM, 0, span, sizeof(span)))
        return 1;
    hvctx_finish(&gm);
    rc |= hostile_seed(argv[1], "hostile_guest_mem_zipf", 1024, 0x10000, 1024, 1024, 1,
                       STREAM_PAGE_XALLOC, &gm);
    hvctx_free(&gm);
    domain_destroy(d);
    machine_destroy(m);
    return rc;
}
