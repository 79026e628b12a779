/*
 * cmd_balloon.c - `hugevm balloon`: build a guest (RAM or PoD), drive the
 * balloon driver model to a target and back, and report how many 2M and 4K
 * extents moved and the resulting leaf counts.  --fragment F makes other
 * domains take F of the free host memory in 4K pieces between inflate and
 * deflate, so that 2M deflates fall back to 4K (counted).
 *
 * --workload NAME runs the guest while the balloon moves: vCPUs run the
 * workload on their own thread (the migration runner, migrate.h) and the
 * driver moves --step at a time under d->lock, the guest running between
 * steps.  The workloads address what the guest keeps at the target (the
 * guest's own allocations; the driver only takes memory the guest does not
 * use), so the RAM below the target is laid out first, the workloads are
 * created over it, and the rest of the guest is populated after.  A sampled
 * shadow of that memory, fed by every write the workloads make, is
 * compared byte for byte at the end.
 */
#include <sched.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "balloon.h"
#include "cli.h"
#include "guest.h"
#include "domain.h"
#include "migrate.h"
#include "shadow.h"

static struct {
    uint64_t guest_mem, host_mem, target, pod_target;
    double fragment;
    bool json, no_audit, no_deflate, give_back_4k;
    const char *backend;
    uint64_t step;
} o = {
    .guest_mem = 2 * GiB,
    .target = 1 * GiB,
    .step = 64 * MiB,
    .backend = "auto",
};

static struct cli_workload_spec wl = {
    .def = {.vcpus = 2, .write_rate = 100000, .seed = 1, .settle_ms = 100, .wss = 1.0},
    .names = "seq, uniform, zipf or writer",
    .rate_what = "accesses",
    .meanwhile = true,
    .seed_also = " and of the fragmentation",
    .settle_when = "before, at and after the target",
};

/* Move the balloon to `target` pages, --step at a time under d->lock when
 * the guest runs (g), letting it run between steps.  Steps are whole 2M
 * units; the part below a step goes last when inflating and first when
 * deflating, so a deflate pops exactly what each inflate step pushed and
 * never has to cut a 2M extent into 4K ones. */
static int balloon_move(struct balloon *b, struct guest *g, uint64_t target)
{
    uint64_t step = g ? (o.step >> PAGE_SHIFT) & ~511ULL : 0;
    if (g && !step)
        step = 512;
    int rc = 0;
    while (rc == 0 && balloon_current(b) != target) {
        uint64_t cur = balloon_current(b), next = target;
        if (step && cur > target && cur - target > step)
            next = cur - step;
        else if (step && target > cur && target - cur > step)
            next = cur + ((target - cur) % step ? (target - cur) % step : step);
        if (g)
            domain_lock(b->d);
        rc = balloon_set_target(b, next);
        if (g) {
            domain_unlock(b->d);
            sched_yield();
        }
        if (rc == 0 && balloon_current(b) != next)
            break; /* clamped: nothing more to move */
    }
    return rc;
}

static void print_stats(const struct balloon *b, FILE *out)
{
#define X(name, desc)                                                          \
    fprintf(out, "    %-18s %10llu  %s\n", #name, (unsigned long long)b->stats.name, desc);
    BALLOON_STAT_FIELDS(X)
#undef X
}

static int run_balloon(int argc, char **argv)
{
    struct machine *m = NULL;
    struct domain *d = NULL;
    struct balloon b = {0};
    struct guest *g = NULL;
    struct guest_shadow model = {0};
    int rc, status = 1, g_kind = -1;
    char b1[32], b2[32];
    if (argc)
        return cli_error("balloon: unexpected argument '%s'", argv[0]);
    int backend = GUEST_BACKEND_SOFT;
    char bwhy[300];
    if (!strcmp(o.backend, "auto")) {
        snprintf(bwhy, sizeof(bwhy), "auto: the host's balloon on soft vCPUs; --backend kvm or "
                 "native runs the guest's own balloon driver");
    } else if (cli_backend("balloon", o.backend, NULL, false, &backend, bwhy, sizeof(bwhy))) {
        return 1;
    }
    if (backend != GUEST_BACKEND_SOFT) {
        if (o.guest_mem % (2 * MiB) || o.target % (2 * MiB) || o.target < 8 * MiB ||
            o.target >= o.guest_mem)
            return cli_error("balloon: with the guest's driver, --guest-mem and --target are "
                             "multiples of 2 MiB, 8 MiB <= target < guest");
        if (wl.v.vcpus == 0 || wl.v.vcpus > HVG_MAX_VCPUS)
            return cli_error("balloon: --vcpus must be in 1..%u", HVG_MAX_VCPUS);
        if (!o.host_mem)
            o.host_mem = (o.guest_mem + o.guest_mem / 2 + 64 * MiB + GiB - 1) & ~(GiB - 1);
        if (cli_machine_create("balloon", &m, o.host_mem, false, NULL) < 0)
            return 1;
        struct domain_config pcfg;
        domain_config_default(&pcfg);
        rc = domain_create(m, &pcfg, &d);
        /* a PoD guest: PoD entries for all of it, a cache of --pod-target;
         * its driver balloons down before its memory is touched (Xen's
         * boot), and its touches are PoD faults the fault server serves */
        if (rc == 0)
            rc = domain_populate_guest_flags(d, o.guest_mem,
                                             o.pod_target ? DOMAIN_POPULATE_POD : 0, NULL);
        if (rc == 0 && o.pod_target)
            rc = pod_set_target(d, o.pod_target >> PAGE_SHIFT);
        if (rc < 0) {
            cli_error("balloon: building the guest failed: %s", strerror(-rc));
        } else {
            struct cli_balloon_prog a = {
                .backend = backend, .why = bwhy, .guest_mem = o.guest_mem, .target = o.target,
                .vcpus = (unsigned)wl.v.vcpus, .workload = wl.v.workload, .seed = wl.v.seed,
                .write_rate = wl.v.write_rate, .fragment = o.fragment, .no_deflate = o.no_deflate,
                .give_back_4k = o.give_back_4k,
                .json = o.json, .no_audit = o.no_audit,
            };
            status = cli_balloon_program(m, d, &a);
        }
        domain_destroy(d);
        machine_destroy(m);
        return status;
    }
    if (wl.v.workload) {
        enum workload_kind k;
        if (workload_parse(wl.v.workload, &k) < 0)
            return cli_error("balloon: unknown workload '%s'", wl.v.workload);
        g_kind = (int)k;
        if (wl.v.vcpus == 0 || wl.v.vcpus > MIGRATE_MAX_VCPUS)
            return cli_error("balloon: --vcpus must be in 1..%d", MIGRATE_MAX_VCPUS);
        if (wl.v.wss <= 0 || wl.v.wss > 1)
            return cli_error("balloon: --wss must be in (0, 1]");
        if (o.target < 2 * MiB)
            return cli_error("balloon: with --workload, --target must leave at least 2 MiB "
                             "for the workload");
        if (o.step < PAGE_SIZE)
            return cli_error("balloon: --step must be at least 4 KiB");
    }
    if (o.guest_mem == 0 || o.guest_mem % PAGE_SIZE || o.target % PAGE_SIZE)
        return cli_error("balloon: sizes must be multiples of 4 KiB");
    if (o.fragment < 0 || o.fragment >= 1)
        return cli_error("balloon: --fragment must be in [0, 1)");
    if (!o.host_mem)
        o.host_mem = (o.guest_mem + o.guest_mem / 2 + 64 * MiB + GiB - 1) & ~(GiB - 1);
    if (cli_machine_create("balloon", &m, o.host_mem, false, NULL) < 0)
        return 1;
    struct domain_config cfg;
    domain_config_default(&cfg);
    unsigned pflags = o.pod_target ? DOMAIN_POPULATE_POD : 0;
    uint64_t kept = (o.target < o.guest_mem ? o.target : o.guest_mem) & ~(PAGE_SIZE - 1);
    rc = domain_create(m, &cfg, &d);
    if (rc == 0 && g_kind >= 0) {
        /* what the guest keeps first: the workloads live there */
        struct workload_config wc;
        struct gfn_range r[2];
        workload_config_default(&wc, (enum workload_kind)g_kind);
        wc.seed = wl.v.seed;
        wc.wss = wl.v.wss;
        wc.write_rate = wl.v.write_rate;
        wc.on_write = guest_shadow_write;
        wc.ctx = &model;
        rc = domain_populate_guest_flags(d, kept, pflags, NULL);
        if (rc == 0)
            rc = guest_shadow_init(&model, d, r, domain_guest_layout(d, kept, r));
        if (rc == 0)
            rc = guest_create_soft(d, (unsigned)wl.v.vcpus, NULL, &wc, &g);
    }
    if (rc == 0)
        rc = domain_populate_guest_flags(d, o.guest_mem, pflags, NULL);
    if (rc == 0 && o.pod_target)
        rc = pod_set_target(d, o.pod_target >> PAGE_SHIFT);
    if (rc == 0)
        rc = balloon_init(&b, d, o.guest_mem);
    if (rc < 0) {
        cli_error("balloon: building the guest failed: %s", strerror(-rc));
        goto out;
    }
    if (g) {
        if ((rc = guest_start(g)) < 0) {
            cli_error("balloon: cannot start the guest: %s", strerror(-rc));
            goto out;
        }
        cli_sleep_ms(wl.v.settle_ms);
    }
    uint64_t full = balloon_current(&b);
    uint64_t acc0 = g ? __atomic_load_n(&g->accesses, __ATOMIC_RELAXED) : 0;
    uint64_t t0 = hv_now_ns();
    rc = balloon_move(&b, g, o.target >> PAGE_SHIFT);
    uint64_t t1 = hv_now_ns();
    uint64_t acc1 = g ? __atomic_load_n(&g->accesses, __ATOMIC_RELAXED) : 0;
    if (rc < 0) {
        cli_error("balloon: inflate failed: %s", strerror(-rc));
        goto out;
    }
    if (g)
        domain_lock(d);
    uint64_t l4 = domain_pages_4k(d), l2 = domain_pages_2m(d), l1 = domain_pages_1g(d);
    if (g) {
        domain_unlock(d);
        cli_sleep_ms(wl.v.settle_ms); /* the guest runs at the target */
    }
    uint64_t frag_ops = 0, t2 = 0, t3 = 0;
    int drc = 0;
    if (!o.no_deflate) {
        if (o.fragment > 0) {
            domid_t churner = ++m->next_domid;
            struct frame_stats st;
            frames_get_stats(m->frames, &st);
            /* the churner ends up holding F of what is free, in 4K pieces */
            double tgt = o.fragment * (double)st.free_frames / (double)st.nr_frames;
            if (frames_fragment(m->frames, churner, tgt, 0.7, wl.v.seed, &frag_ops) < 0)
                cli_error("balloon: could not fragment the host (continuing)");
        }
        t2 = hv_now_ns();
        drc = balloon_move(&b, g, full);
        t3 = hv_now_ns();
    }
    uint64_t acc2 = g ? __atomic_load_n(&g->accesses, __ATOMIC_RELAXED) : 0;
    uint64_t bad = 0;
    int gerr = 0;
    if (g) {
        cli_sleep_ms(wl.v.settle_ms);
        guest_stop(g);
        gerr = g->err;
        bad = guest_shadow_verify(&model, d);
    }
    int audit = o.no_audit ? 0 : domain_audit(d);
    if (audit == 0 && !o.no_audit)
        audit = frames_audit(m->frames);
    if (audit == 0 && !o.no_audit)
        audit = balloon_audit(&b);
    double gin = (double)((full - (o.target >> PAGE_SHIFT)) << PAGE_SHIFT) / GiB;
    if (o.json) {
        struct json j;
        json_init(&j, stdout);
        json_obj_begin(&j, NULL);
        json_str(&j, "backend", "soft");
        json_str(&j, "backend_why", bwhy);
        json_u64(&j, "guest_bytes", o.guest_mem);
        json_u64(&j, "target_bytes", o.target);
        json_bool(&j, "pod_guest", o.pod_target != 0);
        json_obj_begin(&j, "balloon");
#define X(name, desc) json_u64(&j, #name, b.stats.name);
        BALLOON_STAT_FIELDS(X)
#undef X
        json_obj_end(&j);
        json_dbl(&j, "inflate_seconds", (double)(t1 - t0) / 1e9);
        json_dbl(&j, "deflate_seconds", (double)(t3 - t2) / 1e9);
        json_u64(&j, "inflated_pages_4k", l4);
        json_u64(&j, "inflated_pages_2m", l2);
        json_u64(&j, "inflated_pages_1g", l1);
        json_u64(&j, "pages_4k", domain_pages_4k(d));
        json_u64(&j, "pages_2m", domain_pages_2m(d));
        json_u64(&j, "pages_1g", domain_pages_1g(d));
        if (drc < 0)
            json_str(&j, "deflate_error", strerror(-drc));
        if (g) {
            json_obj_begin(&j, "guest");
            json_str(&j, "workload", workload_name((enum workload_kind)g_kind));
            json_u64(&j, "vcpus", g->nr_vcpus);
            json_u64(&j, "accesses_during_inflate", acc1 - acc0);
            json_u64(&j, "accesses_during_deflate", acc2 - acc1);
            json_u64(&j, "accesses", g->accesses);
            json_u64(&j, "shadowed_pages", model.slots);
            json_u64(&j, "shadowed_writes", model.writes);
            json_u64(&j, "pages_wrong", bad);
            json_str(&j, "error", gerr ? strerror(-gerr) : "none");
            json_obj_end(&j);
        }
        if (o.pod_target)
            cli_json_pod(&j, "pod", d);
        cli_json_domain(&j, "domain", d);
        json_str(&j, "audit", o.no_audit ? "skipped" : audit ? hv_audit_last() : "ok");
        json_obj_end(&j);
        json_finish(&j);
    } else {
        printf("backend: soft (%s)\n", bwhy);
        printf("guest %s%s: balloon to %s in %.2f ms (%.1f GiB/s)\n",
               hv_fmt_size(o.guest_mem, b1, sizeof(b1)), o.pod_target ? " (PoD)" : "",
               hv_fmt_size(o.target, b2, sizeof(b2)), (double)(t1 - t0) / 1e6,
               (double)(t1 - t0) > 0 ? gin / ((double)(t1 - t0) / 1e9) : 0);
        printf("  inflated: pages_1g %llu pages_2m %llu pages_4k %llu\n",
               (unsigned long long)l1, (unsigned long long)l2, (unsigned long long)l4);
        if (!o.no_deflate) {
            if (o.fragment > 0)
                printf("  host fragmented before deflate (%llu allocator ops)\n",
                       (unsigned long long)frag_ops);
            printf("  deflated back in %.2f ms%s%s\n", (double)(t3 - t2) / 1e6,
                   drc < 0 ? ": stopped: " : "", drc < 0 ? strerror(-drc) : "");
        }
        if (g)
            printf("  guest running meanwhile: %u vCPU(s), workload %s, %llu accesses during "
                   "inflate, %llu during deflate (%llu in all); %llu shadowed pages (%llu "
                   "writes) checked: %llu wrong%s%s\n",
                   g->nr_vcpus, workload_name((enum workload_kind)g_kind),
                   (unsigned long long)(acc1 - acc0), (unsigned long long)(acc2 - acc1),
                   (unsigned long long)g->accesses, (unsigned long long)model.slots,
                   (unsigned long long)model.writes, (unsigned long long)bad,
                   gerr ? "; the workload stopped: " : "", gerr ? strerror(-gerr) : "");
        print_stats(&b, stdout);
        if (b.stats.inflated_4k || b.stats.deflated_4k || b.stats.deflate_2m_as_4k)
            printf("  NOTE: %llu extent(s) moved as 4K (remainders below 2M, holes, or no "
                   "free 2M extent)\n",
                   (unsigned long long)(b.stats.inflated_4k + b.stats.deflated_4k +
                                        b.stats.deflate_2m_as_4k));
        cli_print_domain(d, stdout);
        if (o.pod_target)
            cli_print_pod(d, stdout);
        if (!o.no_audit)
            printf("audit: %s\n",
                   audit ? hv_audit_last() : "ok (p2m, domain, PoD, frames, balloon)");
    }
    status = audit || drc < 0 || bad || gerr ? 1 : 0;
out:
    guest_destroy(g); /* stops the runner first */
    guest_shadow_free(&model);
    balloon_fini(&b);
    domain_destroy(d);
    machine_destroy(m);
    return status;
}

static struct opt balloon_opts[] = {
    {"guest-mem", OPT_SIZE, &o.guest_mem, "SIZE", "guest RAM (default 2G)", NULL},
    {"target", OPT_SIZE, &o.target, "SIZE", "balloon target (default 1G)", NULL},
    {"pod-target", OPT_SIZE, &o.pod_target, "SIZE", "PoD guest backed by SIZE of real memory", NULL},
    {"host-mem", OPT_SIZE, &o.host_mem, "SIZE", "machine size (default: guest + 50%)", NULL},
    {"fragment", OPT_FRAC, &o.fragment, "F", "before deflating, other domains take F of free memory in 4K pieces", NULL},
    {"no-deflate", OPT_FLAG, &o.no_deflate, NULL, "stop after the inflate", NULL},
    {"give-back-4k", OPT_FLAG, &o.give_back_4k, NULL, "with --backend kvm|native: the guest's "
     "driver zeroes each 2M extent and gives it back as 512 pages of 4K, as Linux's driver "
     "does (with --pod-target: seed 003, each zero superpage reclaimed whole, decrease_zero_2m)",
     NULL},
    {"backend", OPT_STR, &o.backend, "NAME", "soft or auto (default): the host's balloon, with --workload on soft vCPUs; kvm or native: the guest's own balloon driver in 2M extents, which sees the host's 2M refusals and falls back to 4K itself", NULL},
    CLI_WORKLOAD_OPTS(wl),
    {"step", OPT_SIZE, &o.step, "SIZE", "with --workload: balloon moved per d->lock hold, in 2M units (default 64M)", NULL},
    CLI_WORKLOAD_SETTLE_OPT(wl),
    {"no-audit", OPT_FLAG, &o.no_audit, NULL, "skip the audits", NULL},
    {"json", OPT_FLAG, &o.json, NULL, "machine-readable output", NULL},
    {0},
};

const struct cmd cmd_balloon = {
    .name = "balloon",
    .summary = "drive the balloon driver to a target in 2M units, and back (--workload: while the guest runs)",
    .run = run_balloon,
    .opts = balloon_opts,
    .workload = &wl,
};
