/*
 * bench_pod.c - PoD, zero sweep, balloon and defrag figures (`--only pod`),
 * each next to the physical limit measured in the same run:
 *  - zero check GB/s (each implementation) next to read bandwidth;
 *  - first touch of every page of a PoD guest, 2M cache vs 4K entries;
 *  - balloon inflate / deflate GiB/s (2M extents);
 *  - defrag MiB/s next to memcpy bandwidth.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "balloon.h"
#include "bench.h"
#include "defrag.h"
#include "domain.h"
#include "pod.h"
#include "zero.h"

#define PRUNS 3

static void bench_zero(bench_add_fn add)
{
    size_t len = 256 * MiB;
    uint8_t *buf = aligned_alloc(2 * MiB, len);
    if (!buf)
        bench_fail("aligned_alloc");
    memset(buf, 0, len);
    static const enum zero_impl impls[] = {ZERO_IMPL_AUTO, ZERO_IMPL_AVX2, ZERO_IMPL_SSE2,
                                           ZERO_IMPL_PORTABLE};
    for (size_t k = 0; k < ARRAY_SIZE(impls); k++) {
        if (!zero_impl_supported(impls[k]) || zero_set_impl(impls[k]) < 0)
            continue;
        double rd[PRUNS], zc[PRUNS];
        for (int r = 0; r < PRUNS; r++) {
            rd[r] = bench_read_gbs(buf, len);
            uint64_t t = hv_now_ns();
            bool z = true;
            for (size_t off = 0; off < len; off += 2 * MiB) /* superpage checks */
                z &= zero_check(buf + off, 2 * MiB);
            zc[r] = (double)len / (double)(hv_now_ns() - t);
            bench_sink += z;
        }
        double r = bench_median(rd, PRUNS), z = bench_median(zc, PRUNS);
        char name[64];
        snprintf(name, sizeof(name), "zero_check_%s_gb_per_s",
                 zero_impl_name(impls[k] == ZERO_IMPL_AUTO ? zero_get_impl() : impls[k]));
        if (impls[k] == ZERO_IMPL_AUTO)
            snprintf(name, sizeof(name), "zero_check_gb_per_s");
        add(name, z, "GB/s", r, "read_gb_per_s", z / r);
    }
    if (zero_set_impl(ZERO_IMPL_AUTO) < 0)
        bench_fail("zero_set_impl");
    free(buf);
}

/* Touch (write one byte of) every page of a PoD guest. */
static void bench_first_touch(bench_add_fn add)
{
    static const struct {
        const char *name;
        bool four_k;
    } cases[] = {{"pod_first_touch_2m_ms_per_gib", false},
                 {"pod_first_touch_4k_ms_per_gib", true}};
    uint64_t bytes = 512 * MiB, nr = bytes >> PAGE_SHIFT;
    gfn_t base = GFN_4G + 512;
    for (size_t k = 0; k < ARRAY_SIZE(cases); k++) {
        double v[PRUNS];
        for (int r = 0; r < PRUNS; r++) {
            struct machine *m;
            struct domain *d;
            struct domain_config c;
            if (machine_create(&m, bytes + 64 * MiB, FRAME_POLICY_FRAGPOOL) < 0)
                bench_fail("machine_create");
            domain_config_default(&c);
            if (cases[k].four_k) {
                c.nr_4k_ranges = 1;
                c.ranges_4k[0] = (struct gfn_range){base, nr};
            }
            if (domain_create(m, &c, &d) < 0)
                bench_fail("domain_create");
            if (domain_populate_flags(d, base, nr, DOMAIN_POPULATE_POD, NULL) < 0)
                bench_fail("domain_populate_flags(POD)");
            if (pod_set_target(d, nr) < 0)
                bench_fail("pod_set_target");
            uint64_t t = hv_now_ns();
            for (gfn_t g = base; g < base + nr; g++) {
                enum p2m_type ty;
                mfn_t mfn = p2m_get_entry(d->p2m, g, &ty, NULL);
                if (ty == p2m_pod) {
                    if (pod_demand_populate(d, g) < 0)
                        bench_fail("pod_demand_populate");
                    mfn = p2m_get_entry(d->p2m, g, &ty, NULL);
                }
                *(volatile uint8_t *)machine_ptr(m, mfn) = 1;
            }
            v[r] = (double)(hv_now_ns() - t) / 1e6 / ((double)bytes / GiB);
            domain_destroy(d);
            machine_destroy(m);
        }
        add(cases[k].name, bench_median(v, PRUNS), "ms/GiB", 0, NULL, 0);
    }
}

static void bench_balloon(bench_add_fn add)
{
    uint64_t bytes = 4 * GiB;
    double vi[PRUNS], vd[PRUNS];
    for (int r = 0; r < PRUNS; r++) {
        struct machine *m;
        struct domain *d;
        struct domain_config c;
        struct balloon b;
        if (machine_create(&m, bytes + 512 * MiB, FRAME_POLICY_FRAGPOOL) < 0)
            bench_fail("machine_create");
        domain_config_default(&c);
        if (domain_create(m, &c, &d) < 0)
            bench_fail("domain_create");
        if (domain_populate_guest(d, bytes, NULL) < 0)
            bench_fail("domain_populate_guest");
        if (balloon_init(&b, d, bytes) < 0)
            bench_fail("balloon_init");
        uint64_t full = balloon_current(&b), low = full / 4;
        uint64_t t = hv_now_ns();
        if (balloon_set_target(&b, low) < 0)
            bench_fail("balloon_set_target(inflate)");
        uint64_t t1 = hv_now_ns();
        if (balloon_set_target(&b, full) < 0)
            bench_fail("balloon_set_target(deflate)");
        uint64_t t2 = hv_now_ns();
        double gib = (double)((full - low) << PAGE_SHIFT) / GiB;
        vi[r] = gib / ((double)(t1 - t) / 1e9);
        vd[r] = gib / ((double)(t2 - t1) / 1e9);
        balloon_fini(&b);
        domain_destroy(d);
        machine_destroy(m);
    }
    add("balloon_inflate_gib_per_s", bench_median(vi, PRUNS), "GiB/s", 0, NULL, 0);
    add("balloon_deflate_gib_per_s", bench_median(vd, PRUNS), "GiB/s", 0, NULL, 0);
}

static void bench_defrag(bench_add_fn add)
{
    uint64_t bytes = 128 * MiB, nr = bytes >> PAGE_SHIFT;
    gfn_t base = GFN_4G;
    double v[PRUNS], mc[PRUNS];
    uint8_t *a = malloc(bytes), *b = malloc(bytes);
    if (!a || !b)
        bench_fail("malloc");
    memset(a, 1, bytes);
    memset(b, 2, bytes);
    for (int r = 0; r < PRUNS; r++) {
        mc[r] = bench_memcpy_gbs(b, a, bytes) * 1e9 / MiB;
        bench_sink += b[r];
        struct machine *m;
        struct domain *d;
        struct domain_config c;
        if (machine_create(&m, 2 * bytes + 64 * MiB, FRAME_POLICY_FRAGPOOL) < 0)
            bench_fail("machine_create");
        domain_config_default(&c);
        if (domain_create(m, &c, &d) < 0)
            bench_fail("domain_create");
        for (uint64_t i = nr; i-- > 0;) { /* scattered 4K frames */
            mfn_t mfn;
            if (domain_map_extent(d, base + i, PAGE_ORDER_4K, &mfn) < 0)
                bench_fail("domain_map_extent");
            memset(machine_ptr(m, mfn), (int)(i & 0xff) | 1, PAGE_SIZE);
        }
        struct defrag_stats st = {0};
        uint64_t t = hv_now_ns();
        if (defrag_run(d, base, nr, PAGE_ORDER_2M, 0, &st) < 0)
            bench_fail("defrag_run");
        if (st.merged_2m != nr / 512)
            bench_fail("defrag_run merging every 2M extent");
        v[r] = (double)(st.pages_copied << PAGE_SHIFT) / MiB / ((double)(hv_now_ns() - t) / 1e9);
        domain_destroy(d);
        machine_destroy(m);
    }
    free(a);
    free(b);
    double dm = bench_median(v, PRUNS), cm = bench_median(mc, PRUNS);
    add("defrag_2m_mib_per_s", dm, "MiB/s", cm, "memcpy_mib_per_s", dm / cm);
}

void bench_pod(bench_add_fn add)
{
    bench_zero(add);
    bench_first_touch(add);
    bench_balloon(add);
    bench_defrag(add);
}
