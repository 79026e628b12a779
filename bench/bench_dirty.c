/*
 * bench_dirty.c - the soft vCPU and log-dirty benchmarks (`--only dirty`).
 *
 * 1. dirty_log_perf_test's figures for each log-dirty mode on a multi-GiB
 *    guest: enable time, per-round time of the writer workload (each vCPU
 *    writes one word in every page of its slice per round; the first round
 *    takes the write faults and splits, the figure is the median of the
 *    later rounds), harvest time per GiB of guest, disable (merge-back)
 *    time, superpages recovered.  Limit for the writer: the same stores
 *    made directly into machine memory (no translation) in the same run.
 * 2. vCPU throughput and TLB misses per million accesses for one uniform
 *    (GUPS) workload over an 8 GiB guest (larger than the default TLB's 2M
 *    reach) mapped with 4K, 2M and 1G leaves (guest page size 1G, so TLB
 *    entries are as large as the EPT leaf).  Limit: the same accesses made
 *    directly into machine memory.
 * Every figure is the median of several runs.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench.h"
#include "dirty.h"
#include "vcpu.h"
#include "workload.h"

#define DRUNS 3
#define DIRTY_GUEST (4 * GiB)
#define DIRTY_VCPUS 2
#define DIRTY_ROUNDS 4

/* The guest's frames, page by page (RAM pages of the layout, in order). */
static mfn_t *guest_mfns(struct domain *d, uint64_t *n)
{
    mfn_t *v = malloc(d->tot_pages * sizeof(*v));
    uint64_t k = 0;
    for (gfn_t g = 0; k < d->tot_pages && g < P2M_GFN_LIMIT;) {
        enum p2m_type t;
        unsigned order;
        mfn_t mfn = p2m_get_entry(d->p2m, g, &t, &order);
        if (!p2m_is_ram(t)) {
            g = (g & ~(order_pages(order) - 1)) + order_pages(order);
            continue;
        }
        v[k++] = mfn;
        g++;
    }
    *n = k;
    return v;
}

/* The writer's stores made directly: one word in every page of the guest. */
static double direct_round_ms(struct machine *m, const mfn_t *mfns, uint64_t n, uint64_t pass)
{
    uint64_t t = hv_now_ns();
    for (uint64_t i = 0; i < n; i++) {
        uint64_t *p = (uint64_t *)((uint8_t *)machine_ptr(m, mfns[i]) +
                                   ((pass * 8) & (PAGE_SIZE - 8)));
        *p = i ^ pass;
    }
    return (double)(hv_now_ns() - t) / 1e6;
}

static void bench_modes(bench_add_fn add)
{
    for (unsigned mode = 0; mode < DIRTY_NR_MODES; mode++) {
        double en[DRUNS], rnd[DRUNS], hv[DRUNS], dis[DRUNS], rec[DRUNS], lim[DRUNS];
        double split[DRUNS];
        for (int run = 0; run < DRUNS; run++) {
            struct machine *m;
            struct domain *d;
            struct domain_config c;
            int rc = machine_create(&m, DIRTY_GUEST + GiB, FRAME_POLICY_FRAGPOOL);
            if (rc < 0)
                bench_fail_rc("machine_create", rc);
            domain_config_default(&c);
            if ((rc = domain_create(m, &c, &d)) < 0 ||
                (rc = domain_populate_guest(d, DIRTY_GUEST, NULL)) < 0)
                bench_fail_rc("domain_create/domain_populate_guest", rc);
            struct vcpu *v[DIRTY_VCPUS];
            struct workload *w[DIRTY_VCPUS];
            for (unsigned i = 0; i < DIRTY_VCPUS; i++) {
                struct workload_config wc;
                workload_config_default(&wc, WL_WRITER);
                wc.seed = (uint64_t)run + 1;
                if ((rc = vcpu_create(d, i, NULL, &v[i])) < 0 ||
                    (rc = workload_create(d, &wc, i, DIRTY_VCPUS, &w[i])) < 0)
                    bench_fail_rc("vcpu_create/workload_create", rc);
            }
            uint64_t pages = d->tot_pages;
            uint64_t t = hv_now_ns();
            if ((rc = dirty_enable(d, (enum dirty_mode)mode)) < 0)
                bench_fail_rc("dirty_enable", rc);
            en[run] = (double)(hv_now_ns() - t) / 1e6;
            uint64_t nr = dirty_bitmap_gfns(d), nm;
            uint64_t *bm = calloc((nr + 63) / 64, 8);
            mfn_t *mfns = guest_mfns(d, &nm);
            double rv[DIRTY_ROUNDS], hvv[DIRTY_ROUNDS], lv[DIRTY_ROUNDS];
            for (int r = 0; r < DIRTY_ROUNDS; r++) {
                struct workload_result res;
                if ((rc = workload_run(v, w, DIRTY_VCPUS, pages, 0, &res)) < 0)
                    bench_fail_rc("workload_run(writer)", rc);
                rv[r] = (double)res.ns / 1e6;
                struct dirty_round rd;
                if ((rc = dirty_harvest(d, bm, nr, &rd)) < 0)
                    bench_fail_rc("dirty_harvest", rc);
                hvv[r] = (double)rd.ns / 1e6 / ((double)DIRTY_GUEST / GiB);
                lv[r] = direct_round_ms(m, mfns, nm, (uint64_t)r);
            }
            rnd[run] = bench_median(rv + 1, DIRTY_ROUNDS - 1);
            hv[run] = bench_median(hvv + 1, DIRTY_ROUNDS - 1);
            lim[run] = bench_median(lv + 1, DIRTY_ROUNDS - 1);
            struct dirty_disable_result dr;
            t = hv_now_ns();
            if ((rc = dirty_disable(d, NULL, 0, &dr)) < 0)
                bench_fail_rc("dirty_disable", rc);
            dis[run] = (double)(hv_now_ns() - t) / 1e6;
            rec[run] = (double)(dr.recovered_1g + dr.recovered_2m);
            split[run] = (double)(dr.split_1g + dr.split_2m);
            free(bm);
            free(mfns);
            for (unsigned i = 0; i < DIRTY_VCPUS; i++) {
                workload_destroy(w[i]);
                vcpu_destroy(v[i]);
            }
            domain_destroy(d);
            machine_destroy(m);
        }
        const char *mn = dirty_mode_name((enum dirty_mode)mode);
        char name[64];
        snprintf(name, sizeof(name), "dirty_%s_enable_ms", mn);
        add(name, bench_median(en, DRUNS), "ms", 0, NULL, 0);
        double r = bench_median(rnd, DRUNS), l = bench_median(lim, DRUNS);
        snprintf(name, sizeof(name), "dirty_%s_round_ms", mn);
        add(name, r, "ms", l, "direct_stores_ms", l / r);
        snprintf(name, sizeof(name), "dirty_%s_harvest_ms_per_gib", mn);
        add(name, bench_median(hv, DRUNS), "ms/GiB", 0, NULL, 0);
        snprintf(name, sizeof(name), "dirty_%s_disable_ms", mn);
        add(name, bench_median(dis, DRUNS), "ms", 0, NULL, 0);
        snprintf(name, sizeof(name), "dirty_%s_superpages_split", mn);
        add(name, bench_median(split, DRUNS), "count", 0, NULL, 0);
        snprintf(name, sizeof(name), "dirty_%s_superpages_recovered", mn);
        add(name, bench_median(rec, DRUNS), "count", 0, NULL, 0);
    }
}

/* ---- vCPU throughput ----------------------------------------------------------- */

/*
 * The guest must be larger than the TLB's superpage reach, or the 2M/1G
 * misses read 0 and the figures show nothing superpages save: with the
 * default TLB (1536 4K, 1024 2M, 16 1G entries) an 8 GiB guest is 4x the
 * 2M reach (2 GiB) and half the 1G reach (16 GiB), so uniform accesses miss
 * ~100% at 4K, ~75% at 2M and only compulsorily at 1G.  Every guest frame is
 * touched once before measuring (the memfd commits 8 GiB, RSS stays below
 * 10 GiB), so neither the vCPU nor the direct limit pays first-touch faults.
 * One domain per mapping size serves its DRUNS runs (each with a fresh vCPU,
 * TLB and workload) to keep the 8 GiB populate and scrub out of the time.
 */
#define TP_GFN (1ULL << 18)
#define TP_PAGES (8ULL << 18) /* 8 GiB */
#define TP_ACCESSES (4u << 20)

/* The workload's random reads made directly on the guest's frames (the
 * same generator calls as the uniform workload's read-only step). */
static double direct_ns(struct domain *d, const mfn_t *mfns, uint64_t n, uint64_t seed)
{
    struct hv_rng r = {seed};
    uint64_t s = 0, t = hv_now_ns();
    for (unsigned i = 0; i < TP_ACCESSES; i++) {
        uint64_t x = hv_rng_next(&r);
        uint64_t g = hv_rng_below(&r, n);
        (void)hv_rng_next(&r);
        uint64_t *p = (uint64_t *)((uint8_t *)machine_ptr(d->m, mfns[g]) + (x & (PAGE_SIZE - 8)));
        s += *p;
    }
    bench_sink += s;
    return (double)(hv_now_ns() - t) / TP_ACCESSES;
}

static void bench_vcpu(bench_add_fn add)
{
    static const unsigned orders[] = {PAGE_ORDER_4K, PAGE_ORDER_2M, PAGE_ORDER_1G};
    static const char *const on[] = {"4k", "2m", "1g"};
    for (size_t k = 0; k < ARRAY_SIZE(orders); k++) {
        double ns[DRUNS], mpm[DRUNS], refs[DRUNS], lim[DRUNS];
        double miss_sz[DRUNS]; /* misses filled at the mapping's own size */
        struct machine *m;
        struct domain *d;
        struct domain_config c;
        int rc = machine_create(&m, (TP_PAGES << PAGE_SHIFT) + GiB, FRAME_POLICY_FRAGPOOL);
        if (rc < 0)
            bench_fail_rc("machine_create", rc);
        domain_config_default(&c);
        if (orders[k] == PAGE_ORDER_4K) {
            c.nr_4k_ranges = 1;
            c.ranges_4k[0] = (struct gfn_range){TP_GFN, TP_PAGES};
        }
        if ((rc = domain_create(m, &c, &d)) < 0 ||
            (rc = domain_populate(d, TP_GFN, TP_PAGES, NULL)) < 0)
            bench_fail_rc("domain_create/domain_populate", rc);
        if (orders[k] == PAGE_ORDER_2M) {
            d->no_auto_coalesce = true;
            p2m_set_auto_coalesce(d->p2m, false);
            for (gfn_t g = TP_GFN; g < TP_GFN + TP_PAGES; g += 1ULL << 18)
                if ((rc = p2m_split(d->p2m, g)) < 0)
                    bench_fail_rc("p2m_split", rc);
        }
        uint64_t nm;
        mfn_t *mfns = guest_mfns(d, &nm);
        for (uint64_t i = 0; i < nm; i++) /* commit every frame once */
            *(volatile uint8_t *)machine_ptr(m, mfns[i]) = 0;
        for (int run = 0; run < DRUNS; run++) {
            struct tlb_config tc;
            tlb_config_default(&tc);
            tc.guest_order = PAGE_ORDER_1G;
            struct vcpu *v;
            struct workload *w;
            struct workload_config wc;
            workload_config_default(&wc, WL_UNIFORM);
            wc.write_frac = 0; /* reads: the same accesses as the limit */
            wc.seed = 42;
            if ((rc = vcpu_create(d, 0, &tc, &v)) < 0 ||
                (rc = workload_create(d, &wc, 0, 1, &w)) < 0)
                bench_fail_rc("vcpu_create/workload_create", rc);
            struct workload_result res;
            /* warm-up fills the TLB, then the measured run */
            if ((rc = workload_run(&v, &w, 1, TP_ACCESSES / 4, 0, &res)) < 0)
                bench_fail_rc("workload_run(warm-up)", rc);
            memset(&v->st, 0, sizeof(v->st));
            if ((rc = workload_run(&v, &w, 1, TP_ACCESSES, 0, &res)) < 0)
                bench_fail_rc("workload_run", rc);
            ns[run] = (double)res.ns / (double)res.accesses;
            mpm[run] = (double)v->st.tlb_misses * 1e6 / (double)v->st.accesses;
            refs[run] = (double)v->st.walk_refs * 1e6 / (double)v->st.accesses;
            uint64_t msz = orders[k] == PAGE_ORDER_4K   ? v->st.miss_4k
                           : orders[k] == PAGE_ORDER_2M ? v->st.miss_2m
                                                        : v->st.miss_1g;
            miss_sz[run] = (double)msz * 1e6 / (double)v->st.accesses;
            lim[run] = direct_ns(d, mfns, nm, 42);
            workload_destroy(w);
            vcpu_destroy(v);
        }
        free(mfns);
        domain_destroy(d);
        machine_destroy(m);
        char name[64];
        double x = bench_median(ns, DRUNS), l = bench_median(lim, DRUNS);
        snprintf(name, sizeof(name), "vcpu_uniform_%s_ns_per_access", on[k]);
        add(name, x, "ns", l, "direct_access_ns", l / x);
        snprintf(name, sizeof(name), "vcpu_uniform_%s_tlb_misses_per_m", on[k]);
        add(name, bench_median(mpm, DRUNS), "/M", 0, NULL, 0);
        snprintf(name, sizeof(name), "vcpu_uniform_%s_%s_misses_per_m", on[k], on[k]);
        add(name, bench_median(miss_sz, DRUNS), "/M", 0, NULL, 0);
        snprintf(name, sizeof(name), "vcpu_uniform_%s_walk_refs_per_m", on[k]);
        add(name, bench_median(refs, DRUNS), "/M", 0, NULL, 0);
    }
}

void bench_dirty(bench_add_fn add)
{
    bench_vcpu(add);
    bench_modes(add);
}
