/*
 * cmd_defrag.c - `hugevm defrag`: build a guest whose first --scatter bytes
 * are mapped with 4K frames in reverse order (no 2M block contiguous, the
 * shape restore or ballooning leaves behind), fill them, defragment at 2M
 * or 1G with a rate limit, check the bytes and report what was merged.
 *
 * --workload NAME defragments while the guest runs: vCPUs run the workload
 * over the whole guest on their own thread (the migration runner,
 * migrate.h) between the rate-limited defrag steps, which take d->lock.  A
 * sampled shadow of the scattered part, taken after the fill and fed by
 * every write the workloads make, is compared byte for byte at the end
 * (instead of the fill check, which the writes overwrite).
 */
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cli.h"
#include "defrag.h"
#include "domain.h"
#include "migrate.h"
#include "shadow.h"

static struct {
    uint64_t guest_mem, host_mem, scatter;
    double rate;
    const char *order;
    bool json, no_audit;
    const char *backend;
} o = {
    .guest_mem = 1 * GiB,
    .scatter = 256 * MiB,
    .order = "2M",
    .backend = "auto",
};

static struct cli_workload_spec wl = {
    .def = {.vcpus = 2, .write_rate = 100000, .seed = 1, .settle_ms = 50, .wss = 1.0},
    .names = "seq, uniform, zipf or writer",
    .rate_what = "accesses",
    .meanwhile = true,
    .seed_also = "",
    .settle_when = "before and after",
};

static uint8_t fill_of(gfn_t g) { return (uint8_t)((g * 131) | 1); }

static int run_defrag(int argc, char **argv)
{
    struct machine *m = NULL;
    struct domain *d = NULL;
    struct guest *g = NULL;
    struct guest_shadow model = {0};
    int rc, status = 1, g_kind = -1;
    char b1[32], b2[32];
    unsigned order;
    if (argc)
        return cli_error("defrag: unexpected argument '%s'", argv[0]);
    int backend;
    char bwhy[300];
    if (cli_backend("defrag", o.backend, "a guest running under defrag (per-step mirror syncs)", false,
                    &backend, bwhy, sizeof(bwhy)))
        return 1;
    if (wl.v.workload) {
        enum workload_kind k;
        if (workload_parse(wl.v.workload, &k) < 0)
            return cli_error("defrag: unknown workload '%s'", wl.v.workload);
        g_kind = (int)k;
        if (wl.v.vcpus == 0 || wl.v.vcpus > MIGRATE_MAX_VCPUS)
            return cli_error("defrag: --vcpus must be in 1..%d", MIGRATE_MAX_VCPUS);
        if (wl.v.wss <= 0 || wl.v.wss > 1)
            return cli_error("defrag: --wss must be in (0, 1]");
    }
    if (!strcmp(o.order, "2M"))
        order = PAGE_ORDER_2M;
    else if (!strcmp(o.order, "1G"))
        order = PAGE_ORDER_1G;
    else
        return cli_error("defrag: --order takes 2M or 1G");
    if (o.guest_mem == 0 || o.guest_mem % (2 * MiB) || o.scatter % (2 * MiB) ||
        o.scatter > o.guest_mem)
        return cli_error("defrag: sizes must be multiples of 2 MiB, --scatter <= --guest-mem");
    if (!o.host_mem)
        o.host_mem = (2 * o.guest_mem + 64 * MiB + GiB - 1) & ~(GiB - 1);
    if (cli_machine_create("defrag", &m, o.host_mem, false, NULL) < 0)
        return 1;
    struct domain_config cfg;
    domain_config_default(&cfg);
    rc = domain_create(m, &cfg, &d);
    /* the guest lives at 4 GiB (1G-aligned, clear of holes) */
    gfn_t base = GFN_4G, nr = o.guest_mem >> PAGE_SHIFT, ns = o.scatter >> PAGE_SHIFT;
    for (uint64_t i = ns; rc == 0 && i-- > 0;) {
        mfn_t mfn;
        rc = domain_map_extent(d, base + i, PAGE_ORDER_4K, &mfn);
        if (rc == 0)
            memset(machine_ptr(m, mfn), fill_of(base + i), 64);
    }
    if (rc == 0 && nr > ns)
        rc = domain_populate(d, base + ns, nr - ns, NULL);
    if (rc < 0) {
        cli_error("defrag: building the guest failed: %s", strerror(-rc));
        goto out;
    }
    if (g_kind >= 0) {
        struct workload_config wc;
        workload_config_default(&wc, (enum workload_kind)g_kind);
        wc.seed = wl.v.seed;
        wc.wss = wl.v.wss;
        wc.write_rate = wl.v.write_rate;
        wc.on_write = guest_shadow_write;
        wc.ctx = &model;
        struct gfn_range r = {base, ns ? ns : nr};
        rc = guest_shadow_init(&model, d, &r, 1);
        if (rc == 0)
            rc = guest_create_soft(d, (unsigned)wl.v.vcpus, NULL, &wc, &g);
        if (rc == 0)
            rc = guest_start(g);
        if (rc < 0) {
            cli_error("defrag: starting the guest failed: %s", strerror(-rc));
            goto out;
        }
        cli_sleep_ms(wl.v.settle_ms);
    }
    uint64_t l4 = domain_pages_4k(d), l2 = domain_pages_2m(d), l1 = domain_pages_1g(d);
    struct defrag_stats st = {0};
    uint64_t acc0 = g ? __atomic_load_n(&g->accesses, __ATOMIC_RELAXED) : 0;
    uint64_t t0 = hv_now_ns();
    rc = defrag_run(d, base, nr, order, o.rate, &st); /* d->lock around each step */
    double secs = (double)(hv_now_ns() - t0) / 1e9;
    uint64_t acc1 = g ? __atomic_load_n(&g->accesses, __ATOMIC_RELAXED) : 0;
    int gerr = 0;
    if (g) {
        cli_sleep_ms(wl.v.settle_ms);
        guest_stop(g);
        gerr = g->err;
    }
    if (rc < 0) {
        cli_error("defrag: %s", strerror(-rc));
        goto out;
    }
    uint64_t bad = 0;
    if (g) {
        bad = guest_shadow_verify(&model, d); /* pages wrong */
    } else {
        for (uint64_t i = 0; i < ns; i++) {
            mfn_t mfn = p2m_get_entry(d->p2m, base + i, NULL, NULL);
            const uint8_t *p = machine_ptr(m, mfn);
            for (unsigned k = 0; k < 64; k++)
                bad += p[k] != fill_of(base + i);
        }
    }
    int audit = o.no_audit ? 0 : domain_audit(d);
    if (audit == 0 && !o.no_audit)
        audit = frames_audit(m->frames);
    double mibs = secs > 0 ? (double)(st.pages_copied << PAGE_SHIFT) / MiB / secs : 0;
    if (o.json) {
        struct json j;
        json_init(&j, stdout);
        json_obj_begin(&j, NULL);
        json_str(&j, "backend", "soft");
        json_str(&j, "backend_why", bwhy);
        json_u64(&j, "guest_bytes", o.guest_mem);
        json_u64(&j, "scatter_bytes", o.scatter);
        json_str(&j, "order", o.order);
        json_dbl(&j, "rate_mib_per_s", o.rate);
        json_obj_begin(&j, "defrag");
#define X(name, desc) json_u64(&j, #name, st.name);
        DEFRAG_STAT_FIELDS(X)
#undef X
        json_obj_end(&j);
        json_dbl(&j, "seconds", secs);
        json_dbl(&j, "copy_mib_per_s", mibs);
        json_u64(&j, "before_pages_4k", l4);
        json_u64(&j, "before_pages_2m", l2);
        json_u64(&j, "before_pages_1g", l1);
        json_u64(&j, "pages_4k", domain_pages_4k(d));
        json_u64(&j, "pages_2m", domain_pages_2m(d));
        json_u64(&j, "pages_1g", domain_pages_1g(d));
        if (g) {
            json_obj_begin(&j, "guest");
            json_str(&j, "workload", workload_name((enum workload_kind)g_kind));
            json_u64(&j, "vcpus", g->nr_vcpus);
            json_u64(&j, "accesses_during_defrag", acc1 - acc0);
            json_u64(&j, "accesses", g->accesses);
            json_u64(&j, "shadowed_pages", model.slots);
            json_u64(&j, "shadowed_writes", model.writes);
            json_u64(&j, "pages_wrong", bad);
            json_str(&j, "error", gerr ? strerror(-gerr) : "none");
            json_obj_end(&j);
        } else {
            json_u64(&j, "bytes_wrong", bad);
        }
        json_str(&j, "audit", o.no_audit ? "skipped" : audit ? hv_audit_last() : "ok");
        json_obj_end(&j);
        json_finish(&j);
    } else {
        printf("backend: soft (%s)\n", bwhy);
        printf("guest %s, %s of it as scattered 4K frames; defrag at %s%s\n",
               hv_fmt_size(o.guest_mem, b1, sizeof(b1)),
               hv_fmt_size(o.scatter, b2, sizeof(b2)), o.order,
               o.rate > 0 ? " (rate-limited)" : "");
        printf("  before: pages_1g %llu pages_2m %llu pages_4k %llu\n",
               (unsigned long long)l1, (unsigned long long)l2, (unsigned long long)l4);
        printf("  after:  pages_1g %llu pages_2m %llu pages_4k %llu\n",
               (unsigned long long)domain_pages_1g(d), (unsigned long long)domain_pages_2m(d),
               (unsigned long long)domain_pages_4k(d));
        if (g)
            printf("  %.3f s, %.0f MiB/s copied; guest running meanwhile: %u vCPU(s), "
                   "workload %s, %llu accesses during the defrag; %llu shadowed pages "
                   "(%llu writes) checked: %llu wrong%s%s\n",
                   secs, mibs, g->nr_vcpus, workload_name((enum workload_kind)g_kind),
                   (unsigned long long)(acc1 - acc0), (unsigned long long)model.slots,
                   (unsigned long long)model.writes, (unsigned long long)bad,
                   gerr ? "; the workload stopped: " : "", gerr ? strerror(-gerr) : "");
        else
            printf("  %.3f s, %.0f MiB/s copied; bytes wrong after: %llu\n", secs, mibs,
                   (unsigned long long)bad);
#define X(name, desc)                                                          \
    printf("    %-16s %10llu  %s\n", #name, (unsigned long long)st.name, desc);
        DEFRAG_STAT_FIELDS(X)
#undef X
        if (!o.no_audit)
            printf("audit: %s\n", audit ? hv_audit_last() : "ok (p2m, domain, frames)");
    }
    status = audit || bad || gerr ? 1 : 0;
out:
    guest_destroy(g); /* stops the runner first */
    guest_shadow_free(&model);
    domain_destroy(d);
    machine_destroy(m);
    return status;
}

static struct opt defrag_opts[] = {
    {"guest-mem", OPT_SIZE, &o.guest_mem, "SIZE", "guest RAM at 4 GiB (default 1G)", NULL},
    {"scatter", OPT_SIZE, &o.scatter, "SIZE", "leading part mapped as scattered 4K frames (default 256M)", NULL},
    {"order", OPT_STR, &o.order, "SIZE", "merge into 2M (default) or 1G leaves", NULL},
    {"rate", OPT_DBL, &o.rate, "MIB_S", "copy at most MIB_S MiB/s (default unlimited)", NULL},
    {"host-mem", OPT_SIZE, &o.host_mem, "SIZE", "machine size (default: twice the guest)", NULL},
    {"backend", OPT_STR, &o.backend, "NAME", "vCPU backend of the running guest: soft (or auto: soft for now; defrag under a running kvm guest needs a mirror sync per step, next)", NULL},
    CLI_WORKLOAD_OPTS(wl),
    CLI_WORKLOAD_SETTLE_OPT(wl),
    {"no-audit", OPT_FLAG, &o.no_audit, NULL, "skip the audits", NULL},
    {"json", OPT_FLAG, &o.json, NULL, "machine-readable output", NULL},
    {0},
};

const struct cmd cmd_defrag = {
    .name = "defrag",
    .summary = "merge scattered guest regions back into 2M/1G leaves (rate-limited)",
    .run = run_defrag,
    .opts = defrag_opts,
    .workload = &wl,
};
