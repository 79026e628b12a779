/*
 * gen_seeds.c - write the seed corpus of the stream fuzzer: small valid
 * streams of every shape hugevm reads (with and without optional records,
 * holes, PoD, 4K-only ranges, split extents, reverse order, a foreign
 * producer's opaque HVM_CONTEXT).  Usage: gen_seeds DIR.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

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
    domain_destroy(d);
    machine_destroy(m);
    return rc;
}
