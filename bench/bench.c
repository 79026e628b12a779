/*
 * bench.c - hugevm's benchmarks.
 *
 * Every figure is the median of several runs and, where a physical limit
 * applies, is printed next to that limit measured in the same run (memcpy
 * and read bandwidth, a flat-array lookup) with the ratio between them.
 * The machines this runs on are shared and noisy: compare ratios, not
 * absolute numbers.  Output: a table on stdout and, with --json FILE, a list
 * of {name, value, unit[, limit, ratio]} objects.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench.h"
#include "copy.h"
#include "domain.h"

#define RUNS 5

struct figure {
    char name[64];
    double value;
    const char *unit;
    double limit; /* 0: none */
    const char *limit_name;
    double ratio; /* value / limit (or limit / value for times), 0: none */
};

static struct figure figs[128];
static unsigned nfigs;

static void add(const char *name, double value, const char *unit, double limit,
                const char *limit_name, double ratio)
{
    if (nfigs == ARRAY_SIZE(figs))
        return;
    struct figure *f = &figs[nfigs++];
    snprintf(f->name, sizeof(f->name), "%s", name);
    f->value = value;
    f->unit = unit;
    f->limit = limit;
    f->limit_name = limit_name;
    f->ratio = ratio;
    if (limit > 0)
        printf("%-34s %12.2f %-8s limit %-20s %10.2f  ratio %.2f\n", name, value, unit,
               limit_name, limit, ratio);
    else
        printf("%-34s %12.2f %-8s\n", name, value, unit);
    fflush(stdout);
}

/* ---- lookups -------------------------------------------------------------- */

#define LOOKUP_GUEST (4 * GiB)
#define LOOKUPS (4u << 20)

static gfn_t *random_gfns(uint64_t nr_gfns, uint64_t seed)
{
    gfn_t *g = malloc(LOOKUPS * sizeof(*g));
    if (!g)
        bench_fail("malloc of the lookup gfns");
    struct hv_rng r = {seed};
    for (unsigned i = 0; i < LOOKUPS; i++)
        g[i] = hv_rng_below(&r, nr_gfns);
    return g;
}

static double flat_lookup_ns(const uint64_t *flat, const gfn_t *g)
{
    uint64_t s = 0, t = hv_now_ns();
    for (unsigned i = 0; i < LOOKUPS; i++)
        s += flat[g[i]];
    double ns = (double)(hv_now_ns() - t) / LOOKUPS;
    bench_sink += s;
    return ns;
}

static double p2m_lookup_ns(const struct p2m *p, const gfn_t *g)
{
    uint64_t s = 0, t = hv_now_ns();
    for (unsigned i = 0; i < LOOKUPS; i++)
        s += p2m_get_entry(p, g[i], NULL, NULL);
    double ns = (double)(hv_now_ns() - t) / LOOKUPS;
    bench_sink += s;
    return ns;
}

static void bench_lookup(void)
{
    uint64_t nr = LOOKUP_GUEST >> PAGE_SHIFT;
    uint64_t *flat = malloc(nr * sizeof(*flat));
    if (!flat)
        bench_fail("malloc of the flat array");
    for (uint64_t i = 0; i < nr; i++)
        flat[i] = i * 7 + 3;
    gfn_t *g = random_gfns(nr, 99);
    static const unsigned orders[] = {PAGE_ORDER_4K, PAGE_ORDER_2M, PAGE_ORDER_1G};
    for (size_t k = 0; k < ARRAY_SIZE(orders); k++) {
        struct p2m *p;
        if (p2m_create(&p, 1, NULL, 0) < 0)
            bench_fail("p2m_create");
        p2m_set_auto_coalesce(p, false);
        /* map the guest with leaves of exactly this order */
        for (gfn_t x = 0; x < nr; x += order_pages(orders[k]))
            if (p2m_set_entry(p, x, x + (1ULL << 30), orders[k], p2m_ram_rw) < 0)
                bench_fail("p2m_set_entry");
        double pv[RUNS], fv[RUNS];
        for (int r = 0; r < RUNS; r++) {
            fv[r] = flat_lookup_ns(flat, g);
            pv[r] = p2m_lookup_ns(p, g);
        }
        double f = bench_median(fv, RUNS), pl = bench_median(pv, RUNS);
        char name[64];
        snprintf(name, sizeof(name), "p2m_lookup_%s_ns", orders[k] == 0 ? "4k" : orders[k] == 9 ? "2m" : "1g");
        add(name, pl, "ns", f, "flat_array_ns", pl / f);
        snprintf(name, sizeof(name), "p2m_table_bytes_per_gib_%s", orders[k] == 0 ? "4k" : orders[k] == 9 ? "2m" : "1g");
        add(name, (double)p2m_table_bytes(p) / (double)(LOOKUP_GUEST / GiB), "B/GiB", 0, NULL, 0);
        p2m_destroy(p);
    }
    free(g);
    free(flat);
}

/* ---- populate ------------------------------------------------------------- */

static void bench_populate(void)
{
    static const struct {
        const char *name;
        gfn_t base;       /* 1G-aligned base gives 1G leaves, base+512 only 2M */
        bool force_4k;
        uint64_t bytes;
    } cases[] = {
        {"populate_1g_gib_per_s", 1ULL << 18, false, 8 * GiB},
        {"populate_2m_gib_per_s", (1ULL << 18) + 512, false, 4 * GiB},
        {"populate_4k_gib_per_s", 1ULL << 18, true, 1 * GiB},
    };
    for (size_t k = 0; k < ARRAY_SIZE(cases); k++) {
        double v[RUNS];
        for (int r = 0; r < RUNS; r++) {
            struct machine *m;
            struct domain *d;
            struct domain_config c;
            if (machine_create(&m, cases[k].bytes + 2 * GiB, FRAME_POLICY_FRAGPOOL) < 0)
                bench_fail("machine_create");
            domain_config_default(&c);
            uint64_t nr = cases[k].bytes >> PAGE_SHIFT;
            if (cases[k].force_4k) {
                c.nr_4k_ranges = 1;
                c.ranges_4k[0] = (struct gfn_range){cases[k].base, nr};
            }
            if (domain_create(m, &c, &d) < 0)
                bench_fail("domain_create");
            uint64_t t = hv_now_ns();
            if (domain_populate(d, cases[k].base, nr, NULL) < 0)
                bench_fail("domain_populate");
            double s = (double)(hv_now_ns() - t) / 1e9;
            v[r] = (double)cases[k].bytes / GiB / s;
            domain_destroy(d);
            machine_destroy(m);
        }
        add(cases[k].name, bench_median(v, RUNS), "GiB/s", 0, NULL, 0);
    }
}

/* ---- allocator ------------------------------------------------------------ */

static void bench_alloc(void)
{
    static const enum frame_policy pols[] = {FRAME_POLICY_FRAGPOOL, FRAME_POLICY_BUDDY};
    enum { N = 1 << 16 };
    mfn_t *held = malloc(N * sizeof(*held));
    if (!held)
        bench_fail("malloc of the held extents");
    for (size_t p = 0; p < ARRAY_SIZE(pols); p++) {
        for (unsigned order = 0; order <= 9; order += 9) {
            double v[RUNS];
            /* at most half the machine, so 2M requests cannot run out */
            unsigned n = (unsigned)((32 * GiB >> PAGE_SHIFT) >> order);
            if (n > N)
                n = N;
            for (int r = 0; r < RUNS; r++) {
                struct frames *f;
                if (frames_create(&f, (64 * GiB) >> PAGE_SHIFT, pols[p]) < 0)
                    bench_fail("frames_create");
                struct hv_rng rng = {(uint64_t)r + 1};
                uint64_t t = hv_now_ns();
                for (unsigned i = 0; i < n; i++)
                    if (frame_alloc(f, order, 1, &held[i]) < 0)
                        bench_fail("frame_alloc");
                /* free in random order: the expensive, merging direction */
                for (unsigned i = n - 1; i > 0; i--) {
                    unsigned j = (unsigned)hv_rng_below(&rng, i + 1);
                    mfn_t tmp = held[i];
                    held[i] = held[j];
                    held[j] = tmp;
                }
                for (unsigned i = 0; i < n; i++)
                    if (frame_free(f, held[i], order, 1) < 0)
                        bench_fail("frame_free");
                v[r] = (double)(hv_now_ns() - t) / (2.0 * n);
                frames_destroy(f);
            }
            char name[64];
            snprintf(name, sizeof(name), "alloc_free_%s_%s_ns", order ? "2m" : "4k",
                     frame_policy_name(pols[p]));
            add(name, bench_median(v, RUNS), "ns/op", 0, NULL, 0);
        }
    }
    free(held);
}

static void write_json(const char *path)
{
    FILE *f = fopen(path, "w");
    if (!f) {
        perror(path);
        return;
    }
    fprintf(f, "[\n");
    for (unsigned i = 0; i < nfigs; i++) {
        const struct figure *g = &figs[i];
        fprintf(f, "  {\"name\": \"%s\", \"value\": %.6g, \"unit\": \"%s\"", g->name, g->value,
                g->unit);
        if (g->limit > 0)
            fprintf(f, ", \"limit\": %.6g, \"limit_name\": \"%s\", \"ratio\": %.4g", g->limit,
                    g->limit_name, g->ratio);
        fprintf(f, "}%s\n", i + 1 < nfigs ? "," : "");
    }
    fprintf(f, "]\n");
    fclose(f);
}

int main(int argc, char **argv)
{
    const char *json = NULL;
    const char *only = NULL;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--json") && i + 1 < argc)
            json = argv[++i];
        else if (!strcmp(argv[i], "--only") && i + 1 < argc)
            only = argv[++i];
        else {
            fprintf(stderr, "usage: hugevm-bench [--json FILE] [--only lookup|populate|alloc|dirty|pod|stream|migrate|kvm|postcopy|limits]\n");
            return 2;
        }
    }
    printf("hugevm benchmarks: medians of %d runs; limits measured in this run\n", RUNS);
    if (!only || !strcmp(only, "limits") || !strcmp(only, "lookup")) {
        size_t len = GiB; /* beyond the last-level cache (480 MiB on some hosts) */
        uint8_t *a = malloc(len), *b = malloc(len);
        if (!a || !b)
            bench_fail("malloc of the bandwidth buffers");
        memset(a, 1, len);
        memset(b, 2, len);
        double mc[RUNS], rd[RUNS], m4[RUNS], c4[RUNS];
        for (int r = 0; r < RUNS; r++) {
            mc[r] = bench_memcpy_gbs(b, a, len);
            rd[r] = bench_read_gbs(a, len);
            /* page-sized pieces, as save and restore copy: memcpy, then
             * copy_bulk in 4 MiB pieces, a PAGE_DATA record of 1024 pages
             * (copy.h) */
            uint64_t t = hv_now_ns();
            for (size_t off = 0; off < len; off += PAGE_SIZE)
                memcpy(b + off, a + off, PAGE_SIZE);
            m4[r] = (double)len / (double)(hv_now_ns() - t);
            t = hv_now_ns();
            for (size_t off = 0; off < len; off += 1024 * PAGE_SIZE)
                copy_bulk(b + off, a + off, 1024 * PAGE_SIZE);
            c4[r] = (double)len / (double)(hv_now_ns() - t);
            bench_sink += b[len / 2];
        }
        double lim = bench_median(mc, RUNS);
        add("memcpy_gb_per_s", lim, "GB/s", 0, NULL, 0);
        add("read_gb_per_s", bench_median(rd, RUNS), "GB/s", 0, NULL, 0);
        add("memcpy_4k_pieces_gb_per_s", bench_median(m4, RUNS), "GB/s", lim,
            "memcpy_gb_per_s", bench_median(m4, RUNS) / lim);
        add("copy_bulk_4m_pieces_gb_per_s", bench_median(c4, RUNS), "GB/s", lim,
            "memcpy_gb_per_s", bench_median(c4, RUNS) / lim);
        free(a);
        free(b);
    }
    if (!only || !strcmp(only, "lookup"))
        bench_lookup();
    if (!only || !strcmp(only, "populate"))
        bench_populate();
    if (!only || !strcmp(only, "alloc"))
        bench_alloc();
    if (!only || !strcmp(only, "dirty"))
        bench_dirty(add);
    if (!only || !strcmp(only, "pod"))
        bench_pod(add);
    if (!only || !strcmp(only, "stream"))
        bench_stream(add);
    if (!only || !strcmp(only, "migrate"))
        bench_migrate(add);
    if (!only || !strcmp(only, "kvm"))
        bench_guest(add);
    if (!only || !strcmp(only, "postcopy"))
        bench_postcopy(add);
    if (json)
        write_json(json);
    return (int)(bench_sink & 0);
}
