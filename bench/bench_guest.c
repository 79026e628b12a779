/*
 * bench_guest.c - the `kvm` group: what host superpages give a real guest.
 *
 * The same guest (the built-in C workloads, guest/workloads.h) runs with
 * its memory on host 2M pages (shmem THP "advise", the mirror advised
 * MADV_HUGEPAGE; under KVM the guest's page tables use 2M leaves too) and
 * on host 4K pages (shmem THP "never"), in interleaved A/B runs.  Each run
 * builds a fresh domain on a fresh machine, prefaults the workload memory
 * through the mirror, lets the guest read every page of its memory once
 * (both timed: the first-touch cost per GiB of each configuration), then
 * runs it for RUN_S seconds and takes its own accesses per second over the
 * last three quarters.  Figures are medians
 * of per-run ratios: <be>_<workload>_<size>_2m_vs_4k, with be = kvm when
 * /dev/kvm runs guests, else native (the guest code as host code: the
 * host's own page-size effect, without KVM's second dimension).
 *
 * Under KVM it also times how long KVM takes to map the guest with 2M
 * again after dirty logging is switched off (kvm_pages_2m back to where it
 * was before logging, sampled every 10 ms while the guest runs).
 *
 * It ends with issue 11's restores: the guest saved and restored against
 * before the save (restore_after_before), and, for contrast, one stream
 * in random page order restored with hugevm's rule and with Xen's 2025
 * rule (xen_contrast).
 *
 * Switching shmem THP (and, for the contrast, raising vm.max_map_count)
 * needs root: the host's settings are put back when the group ends and at
 * exit, whatever happens.  Without root the group says so and measures
 * nothing.
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "bench.h"
#include "domain.h"
#include "guest.h"
#include "kvm.h"
#include "machine.h"
#include "save.h"
#include "stream.h"

#define RUNS_AB 3
#define RUN_S 2.0

static enum thp_shmem host_thp = THP_SHMEM_UNKNOWN;

/*
 * vm.max_map_count.  A guest restored under Xen's rule from a stream in
 * random page order has scattered 4K leaves, each mirrored by its own mmap
 * (262144 for 1 GiB, over the default limit of 65530): the limit is
 * raised for that part and put back with the THP setting.
 */
#define MAP_COUNT_PATH "/proc/sys/vm/max_map_count"
static long host_map_count = -1;

static long map_count_read(void)
{
    FILE *f = fopen(MAP_COUNT_PATH, "r");
    long v = -1;
    if (f) {
        if (fscanf(f, "%ld", &v) != 1)
            v = -1;
        fclose(f);
    }
    return v;
}

static bool map_count_set(long v)
{
    FILE *f = fopen(MAP_COUNT_PATH, "w");
    if (!f)
        return false;
    bool ok = fprintf(f, "%ld\n", v) > 0;
    return fclose(f) == 0 && ok;
}

static void put_back(void)
{
    if (host_thp != THP_SHMEM_UNKNOWN && thp_shmem_set(host_thp) == 0)
        fprintf(stderr, "kvm group: shmem THP put back to %s\n", thp_shmem_name(host_thp));
    host_thp = THP_SHMEM_UNKNOWN;
    if (host_map_count > 0 && map_count_set(host_map_count))
        fprintf(stderr, "kvm group: vm.max_map_count put back to %ld\n", host_map_count);
    host_map_count = -1;
}

/* Killed mid-run (Ctrl-C, a timeout): put the setting back, then die of
 * the same signal. */
static void on_fatal(int sig)
{
    put_back();
    signal(sig, SIG_DFL);
    raise(sig);
}

static bool thp_set(enum thp_shmem t) { return thp_shmem_set(t) == 0; }

static void sleep_ms(unsigned ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

struct one {
    double rate;       /* accesses per second after warm-up */
    double touch_s;    /* prefault time */
    double pmd_share;  /* host 2M share of the mirror */
    uint64_t mmu[3];   /* KVM's mappings at the end (kvm only) */
    double recover_s;  /* kvm: 2M mappings back after log-dirty off (-1: not measured) */
};

/* KVM's mappings (0 off KVM) and the host's PMD-mapped share of the
 * guest's mirror, now. */
static void mappings_now(struct guest *g, uint64_t mmu[3], double *pmd_share)
{
    if (guest_mmu_pages(g, mmu) < 0)
        memset(mmu, 0, 3 * sizeof(mmu[0]));
    uint64_t rss, pmd;
    if (guest_host_mapping(g, &rss, &pmd) == 0 && rss)
        *pmd_share = (double)pmd / (double)rss;
}

/* The guest's rate over RUN_S from a quarter of it on (warm-up). */
static double rate_of(struct guest *g)
{
    uint64_t t0 = hv_now_ns(), warm_t = 0, warm_a = 0, lim = (uint64_t)(RUN_S * 1e9);
    for (;;) {
        sleep_ms(20);
        uint64_t now = hv_now_ns() - t0, a = guest_accesses(g);
        if (!warm_t && now >= lim / 4) {
            warm_t = now;
            warm_a = a;
        }
        if (now >= lim)
            return (double)(a - warm_a) * 1e9 / (double)(now - warm_t);
        if (g->fault_claimed)
            bench_fail(g->fault.what);
    }
}

/* One run of workload w over `bytes` of guest on backend b, host pages
 * per the current THP setting. */
static struct one run_one(enum guest_backend b, enum hvg_workload w, uint64_t bytes,
                          bool measure_recovery)
{
    struct one r = {.recover_s = -1};
    struct machine *m;
    struct domain *d;
    struct guest *g;
    struct domain_config c;
    char why[256];
    int rc = machine_create(&m, bytes + bytes / 8 + 64 * MiB, FRAME_POLICY_FRAGPOOL);
    if (rc < 0)
        bench_fail_rc("machine_create", rc);
    domain_config_default(&c);
    if ((rc = domain_create(m, &c, &d)) < 0 || (rc = domain_populate_guest(d, bytes, NULL)) < 0)
        bench_fail_rc("domain for the guest", rc);
    struct guest_prog_config pc;
    guest_prog_config_default(&pc, w);
    pc.nr_vcpus = 1;
    pc.console_fd = -1;
    pc.guest_page_order = PAGE_ORDER_2M;
    pc.touch_first = true;
    if ((rc = guest_create_prog(d, b, &pc, &g, why, sizeof(why))) < 0) {
        fprintf(stderr, "kvm group: %s\n", why);
        bench_fail_rc("guest_create_prog", rc);
    }
    int64_t t = guest_prefault(g);
    if (t < 0)
        bench_fail_rc("guest_prefault", (int)t);
    uint64_t ts = hv_now_ns();
    if ((rc = guest_start(g)) < 0)
        bench_fail_rc("guest_start", rc);
    /* the guest's own first pass over its memory (set-up and touch) */
    while (!guest_running_phase(g)) {
        if (g->fault_claimed)
            bench_fail(g->fault.what);
        sleep_ms(5);
    }
    r.touch_s = (double)t / 1e9 + (double)(hv_now_ns() - ts) / 1e9;
    r.rate = rate_of(g);
    mappings_now(g, r.mmu, &r.pmd_share);
    struct kvm_vm *vm = kvm_exec_vm(g->x);
    if (measure_recovery && vm && r.mmu[1] > 0) {
        uint64_t before = r.mmu[1], p[3] = {0};
        if (kvm_set_log_dirty(vm, true) == 0) {
            sleep_ms(500);
            if (kvm_set_log_dirty(vm, false) == 0) {
                uint64_t s0 = hv_now_ns();
                while (hv_now_ns() - s0 < 10ULL * 1000 * 1000 * 1000) {
                    if (kvm_mmu_pages(vm, p) == 0 && p[1] >= before * 95 / 100) {
                        r.recover_s = (double)(hv_now_ns() - s0) / 1e9;
                        break;
                    }
                    sleep_ms(10);
                }
            }
        }
    }
    if ((rc = guest_finish(g, 30ULL * 1000 * 1000 * 1000)) < 0)
        bench_fail_rc("guest_finish", rc);
    guest_destroy(g);
    domain_destroy(d);
    machine_destroy(m);
    return r;
}


/*
 * A program guest (uniform over `bytes`, host pages per the current THP
 * setting) runs, is paused and saved with its vCPUs into *mem (so: NULL or
 * the page order of the stream), then destroyed.  *before gets its rate,
 * *m2_before KVM's pages_2m (0 off KVM).
 */
static void save_running_guest(enum guest_backend b, uint64_t bytes, const struct save_opts *so,
                               struct stream_mem *mem, double *before, uint64_t *m2_before)
{
    struct machine *m1;
    struct domain *d;
    struct domain_config c;
    char why[256], err[256];
    int rc = machine_create(&m1, bytes + bytes / 8 + 64 * MiB, FRAME_POLICY_FRAGPOOL);
    if (rc < 0)
        bench_fail_rc("machine_create", rc);
    domain_config_default(&c);
    if ((rc = domain_create(m1, &c, &d)) < 0 || (rc = domain_populate_guest(d, bytes, NULL)) < 0)
        bench_fail_rc("domain for the guest", rc);
    struct guest_prog_config pc;
    guest_prog_config_default(&pc, HVG_WL_UNIFORM);
    pc.nr_vcpus = 1;
    pc.console_fd = -1;
    pc.guest_page_order = PAGE_ORDER_2M;
    pc.touch_first = true;
    struct guest *g;
    if ((rc = guest_create_prog(d, b, &pc, &g, why, sizeof(why))) < 0)
        bench_fail(why);
    if (guest_prefault(g) < 0 || (rc = guest_start(g)) < 0)
        bench_fail("starting the guest");
    while (!guest_running_phase(g)) {
        if (g->fault_claimed)
            bench_fail(g->fault.what);
        sleep_ms(5);
    }
    *before = rate_of(g);
    uint64_t p[3] = {0};
    *m2_before = guest_mmu_pages(g, p) == 0 ? p[1] : 0;
    guest_pause(g);
    struct hvctx_buf tl;
    if (hvctx_begin(&tl) < 0 || guest_encode(g, &tl) < 0)
        bench_fail("capturing the guest");
    struct stream_io io;
    struct save_result sr;
    *mem = (struct stream_mem){0};
    stream_mem_sink(mem, &io);
    struct save_opts o = so ? *so : (struct save_opts){0};
    o.extra_tlvs = tl.p + sizeof(struct hvctx_header);
    o.extra_tlvs_len = tl.len - sizeof(struct hvctx_header);
    if (stream_save(d, &io, &o, &sr, err, sizeof(err)) < 0)
        bench_fail(err);
    hvctx_free(&tl);
    guest_destroy(g);
    domain_destroy(d);
    machine_destroy(m1);
}

/* A saved guest resumed: its rate, the p2m's leaves, KVM's mappings, the
 * host's PMD-mapped share of its mirror. */
struct resumed {
    double rate, pmd_share;
    uint64_t leaves[3]; /* p2m RAM leaves at 4K, 2M, 1G after the restore */
    uint64_t mmu[3];    /* KVM's mappings after the run (0 off KVM) */
};

/* The guest saved in mem restored (ro) on a fresh machine, prefaulted,
 * resumed and measured. */
static struct resumed resume_saved(const struct stream_mem *mem, uint64_t bytes,
                                   const struct restore_opts *ro)
{
    struct resumed r = {0};
    struct machine *m;
    struct guest *g;
    char why[256], err[256];
    int rc = machine_create(&m, bytes + bytes / 8 + 64 * MiB, FRAME_POLICY_FRAGPOOL);
    if (rc < 0)
        bench_fail_rc("machine_create", rc);
    struct stream_mem src;
    struct stream_io io;
    struct restore_result rr;
    stream_mem_source(&src, &io, mem->buf, mem->len);
    if (stream_restore(m, &io, ro, &rr) < 0)
        bench_fail(rr.err);
    r.leaves[0] = domain_pages_4k(rr.d);
    r.leaves[1] = domain_pages_2m(rr.d);
    r.leaves[2] = domain_pages_1g(rr.d);
    struct guest_prog_state *ps = malloc(sizeof(*ps));
    if (!ps || guest_prog_decode(rr.context, rr.context_len, ps, err, sizeof(err)) != 1)
        bench_fail("decoding the saved vCPUs");
    if ((rc = guest_create_prog_resume(rr.d, ps, &g, why, sizeof(why))) < 0)
        bench_fail(why);
    if (guest_prefault(g) < 0 || (rc = guest_start(g)) < 0)
        bench_fail("resuming the guest");
    r.rate = rate_of(g);
    mappings_now(g, r.mmu, &r.pmd_share);
    if ((rc = guest_finish(g, 30ULL * 1000 * 1000 * 1000)) < 0)
        bench_fail_rc("guest_finish", rc);
    guest_destroy(g);
    domain_destroy(rr.d);
    restore_result_free(&rr);
    free(ps);
    machine_destroy(m);
    return r;
}

/*
 * Issue 11's "as fast after as before", for a save and restore: the same
 * program guest (GUPS over `bytes`, host 2M pages) runs, is paused, saved
 * with its vCPUs into a stream in memory, destroyed, restored on another
 * machine (superpages rebuilt), prefaulted and resumed; its rate and KVM's
 * 2M count after against before.  *m2 gets KVM's pages_2m before and after.
 */
static double restore_after_before(enum guest_backend b, uint64_t bytes, double *before,
                                   double *after, uint64_t m2[2])
{
    struct stream_mem mem;
    save_running_guest(b, bytes, NULL, &mem, before, &m2[0]);
    struct resumed r = resume_saved(&mem, bytes, NULL);
    stream_mem_free(&mem);
    *after = r.rate;
    m2[1] = r.mmu[1];
    return *before > 0 ? *after / *before : 0;
}

/*
 * For contrast (issue 11): the same guest (uniform, host 2M pages) saved
 * with its pages in random order, then restored from that one stream with
 * hugevm's rule and with Xen's 2025 rule (restore_opts.xen_2025_rule: 2M
 * only for a region whose 512 pfns one record holds in order, so none
 * here), each resumed and measured, in turn (the order alternates run by
 * run).  <be>_uniform_1g_restore_xen2025_vs_hugevm: the guest's rate under
 * Xen's rule against hugevm's (median of per-run ratios), then the p2m's
 * leaves and the host's PMD-mapped share of the mirror under each.
 */
static void xen_contrast(bench_add_fn add, enum guest_backend b, const char *be, uint64_t bytes)
{
    long need = (long)(bytes >> PAGE_SHIFT) + 65536;
    host_map_count = map_count_read();
    if (host_map_count > 0 && host_map_count < need) {
        if (!map_count_set(need))
            bench_fail("raising vm.max_map_count for the 4K mirror");
        printf("kvm group: vm.max_map_count %ld -> %ld for the guest restored with 4K leaves\n",
               host_map_count, need);
    } else {
        host_map_count = -1; /* nothing to put back */
    }
    double rh[RUNS_AB], rx[RUNS_AB], ratio[RUNS_AB], sh[RUNS_AB], sx[RUNS_AB];
    struct resumed h = {0}, x = {0};
    for (int k = 0; k < RUNS_AB; k++) {
        struct stream_mem mem;
        double before;
        uint64_t m2b;
        struct save_opts so = {.order = SAVE_ORDER_RANDOM, .seed = 0x5eed + (uint64_t)k};
        save_running_guest(b, bytes, &so, &mem, &before, &m2b);
        struct restore_opts hv = {0}, xen = {.xen_2025_rule = true};
        if (k & 1) {
            x = resume_saved(&mem, bytes, &xen);
            h = resume_saved(&mem, bytes, &hv);
        } else {
            h = resume_saved(&mem, bytes, &hv);
            x = resume_saved(&mem, bytes, &xen);
        }
        stream_mem_free(&mem);
        rh[k] = h.rate;
        rx[k] = x.rate;
        ratio[k] = h.rate > 0 ? x.rate / h.rate : 0;
        sh[k] = h.pmd_share;
        sx[k] = x.pmd_share;
        printf("kvm group: random page order, run %d: before the save %.2f Macc/s; restored "
               "with hugevm's rule %.2f Macc/s (p2m 4k/2m/1g %llu/%llu/%llu, host PMD share "
               "%.2f), with Xen's 2025 rule %.2f Macc/s (%llu/%llu/%llu, %.2f)\n",
               k, before / 1e6, h.rate / 1e6, (unsigned long long)h.leaves[0],
               (unsigned long long)h.leaves[1], (unsigned long long)h.leaves[2], h.pmd_share,
               x.rate / 1e6, (unsigned long long)x.leaves[0], (unsigned long long)x.leaves[1],
               (unsigned long long)x.leaves[2], x.pmd_share);
    }
    char name[96];
    snprintf(name, sizeof(name), "%s_uniform_1g_restore_xen2025_vs_hugevm", be);
    add(name, bench_median(rx, RUNS_AB) / 1e6, "Macc/s", bench_median(rh, RUNS_AB) / 1e6,
        "the same stream restored with hugevm's rule", bench_median(ratio, RUNS_AB));
    static const char *const ln[3] = {"4k", "2m", "1g"};
    for (int l = 0; l < 3; l++) {
        snprintf(name, sizeof(name), "%s_uniform_1g_restore_xen2025_p2m_%s", be, ln[l]);
        add(name, (double)x.leaves[l], "leaves", (double)h.leaves[l], "under hugevm's rule", 0);
    }
    snprintf(name, sizeof(name), "%s_uniform_1g_restore_xen2025_host_2m_share", be);
    add(name, bench_median(sx, RUNS_AB), "share", bench_median(sh, RUNS_AB),
        "under hugevm's rule", 0);
    if (b == GUEST_BACKEND_KVM)
        add("kvm_uniform_1g_restore_xen2025_kvm_pages_2m", (double)x.mmu[1], "pages",
            (double)h.mmu[1], "kvm_pages_2m under hugevm's rule", 0);
    if (host_map_count > 0 && map_count_set(host_map_count))
        printf("kvm group: vm.max_map_count put back to %ld\n", host_map_count);
    host_map_count = -1;
}

void bench_guest(bench_add_fn add)
{
    char why[256];
    enum guest_backend b = guest_backend_auto(why, sizeof(why));
    if (b != GUEST_BACKEND_KVM)
        b = GUEST_BACKEND_NATIVE;
    const char *be = guest_backend_name(b);
    printf("kvm group: backend %s (%s)\n", be, why);
    host_thp = thp_shmem_read();
    if (geteuid() != 0 || host_thp == THP_SHMEM_UNKNOWN || host_thp == THP_SHMEM_DENY) {
        printf("kvm group: skipped: switching shmem THP between 2M and 4K host pages needs root "
               "and a settable /sys/kernel/mm/transparent_hugepage/shmem_enabled (now %s)\n",
               thp_shmem_name(host_thp));
        host_thp = THP_SHMEM_UNKNOWN;
        return;
    }
    atexit(put_back);
    signal(SIGINT, on_fatal);
    signal(SIGTERM, on_fatal);
    signal(SIGHUP, on_fatal);
    printf("kvm group: shmem THP is %s; switched to advise (2M) and never (4K) run by run, "
           "put back at the end\n", thp_shmem_name(host_thp));
    static const uint64_t sizes[] = {1 * GiB, 4 * GiB};
    static const enum hvg_workload wls[] = {HVG_WL_UNIFORM, HVG_WL_CHASE};
    /* HUGEVM_BENCH_KVM_RESTORE_ONLY=1: only the restores (after/before, and
     * Xen's rule against hugevm's); =xen: only the latter */
    const char *ro = getenv("HUGEVM_BENCH_KVM_RESTORE_ONLY");
    bool xen_only = ro && strcmp(ro, "xen") == 0;
    unsigned nsizes = ro && (*ro == '1' || xen_only) ? 0 : ARRAY_SIZE(sizes);
    for (unsigned si = 0; si < nsizes; si++) {
        for (unsigned wi = 0; wi < ARRAY_SIZE(wls); wi++) {
            double ratio[RUNS_AB], r2[RUNS_AB], r4[RUNS_AB], t2[RUNS_AB], t4[RUNS_AB];
            double share2[RUNS_AB], rec[RUNS_AB];
            uint64_t m2 = 0, m4 = 0;
            int nrec = 0;
            for (int k = 0; k < RUNS_AB; k++) {
                if (!thp_set(THP_SHMEM_ADVISE))
                    bench_fail("switching shmem THP to advise");
                struct one a = run_one(b, wls[wi], sizes[si], k == 0 && wi == 0);
                if (!thp_set(THP_SHMEM_NEVER))
                    bench_fail("switching shmem THP to never");
                struct one c = run_one(b, wls[wi], sizes[si], false);
                r2[k] = a.rate;
                r4[k] = c.rate;
                ratio[k] = c.rate > 0 ? a.rate / c.rate : 0;
                t2[k] = a.touch_s * GiB / (double)sizes[si];
                t4[k] = c.touch_s * GiB / (double)sizes[si];
                share2[k] = a.pmd_share;
                m2 = a.mmu[1];
                m4 = c.mmu[1];
                if (a.recover_s >= 0)
                    rec[nrec++] = a.recover_s;
            }
            char name[96];
            const char *wn = guest_workload_name(wls[wi]);
            unsigned gib = (unsigned)(sizes[si] / GiB);
            double med4 = bench_median(r4, RUNS_AB), ratio_m = bench_median(ratio, RUNS_AB);
            snprintf(name, sizeof(name), "%s_%s_%ug_2m_vs_4k", be, wn, gib);
            add(name, bench_median(r2, RUNS_AB) / 1e6, "Macc/s", med4 / 1e6,
                "the same guest on 4K host pages", ratio_m);
            snprintf(name, sizeof(name), "%s_%s_%ug_host_2m_share", be, wn, gib);
            add(name, bench_median(share2, RUNS_AB), "share", 0, NULL, 0);
            if (b == GUEST_BACKEND_KVM) {
                snprintf(name, sizeof(name), "kvm_%s_%ug_kvm_pages_2m", wn, gib);
                add(name, (double)m2, "pages", (double)m4, "kvm_pages_2m on 4K host pages", 0);
            }
            if (wi == 0) {
                double tm2 = bench_median(t2, RUNS_AB), tm4 = bench_median(t4, RUNS_AB);
                snprintf(name, sizeof(name), "%s_first_touch_%ug_2m_s_per_gib", be, gib);
                add(name, tm2, "s/GiB", tm4, "first touch on 4K host pages", tm4 > 0 ? tm2 / tm4 : 0);
            }
            if (nrec) {
                snprintf(name, sizeof(name), "kvm_2m_recovery_after_log_dirty_%ug_s", gib);
                add(name, bench_median(rec, nrec), "s", 0, NULL, 0);
            }
        }
    }
    /* after a restore against before, host 2M pages */
    if (!thp_set(THP_SHMEM_ADVISE))
        bench_fail("switching shmem THP to advise");
    double ab[RUNS_AB], bf[RUNS_AB], af[RUNS_AB];
    uint64_t m2[2] = {0};
    for (int k = 0; k < RUNS_AB && !xen_only; k++)
        ab[k] = restore_after_before(b, 1 * GiB, &bf[k], &af[k], m2);
    char name[96];
    snprintf(name, sizeof(name), "%s_uniform_1g_restore_after_vs_before", be);
    if (!xen_only)
        add(name, bench_median(af, RUNS_AB) / 1e6, "Macc/s", bench_median(bf, RUNS_AB) / 1e6,
            "the same guest before the save", bench_median(ab, RUNS_AB));
    if (b == GUEST_BACKEND_KVM && !xen_only) {
        add("kvm_uniform_1g_restore_kvm_pages_2m", (double)m2[1], "pages", (double)m2[0],
            "kvm_pages_2m before the save", m2[0] ? (double)m2[1] / (double)m2[0] : 0);
    }
    xen_contrast(add, b, be, 1 * GiB);
    put_back();
}
