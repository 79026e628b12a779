/*
 * cmd_balloon.c - `hugevm balloon`: build a guest (RAM or PoD), drive the
 * balloon driver model to a target and back, and report how many 2M and 4K
 * extents moved and the resulting leaf counts.  --fragment F makes other
 * domains take F of the free host memory in 4K pieces between inflate and
 * deflate, so that 2M deflates fall back to 4K (counted).
 */
#include <stdlib.h>
#include <string.h>

#include "balloon.h"
#include "cli.h"
#include "domain.h"

static struct {
    uint64_t guest_mem, host_mem, target, pod_target, seed;
    double fragment;
    bool json, no_audit, no_deflate;
} o = {
    .guest_mem = 2 * GiB,
    .target = 1 * GiB,
    .seed = 1,
};

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
    int rc, status = 1;
    char b1[32], b2[32];
    if (argc)
        return cli_error("balloon: unexpected argument '%s'", argv[0]);
    if (o.guest_mem == 0 || o.guest_mem % PAGE_SIZE || o.target % PAGE_SIZE)
        return cli_error("balloon: sizes must be multiples of 4 KiB");
    if (o.fragment < 0 || o.fragment >= 1)
        return cli_error("balloon: --fragment must be in [0, 1)");
    if (!o.host_mem)
        o.host_mem = (o.guest_mem + o.guest_mem / 2 + 64 * MiB + GiB - 1) & ~(GiB - 1);
    rc = machine_create(&m, o.host_mem, FRAME_POLICY_FRAGPOOL);
    if (rc < 0)
        return cli_error("balloon: cannot create a %s machine: %s",
                         hv_fmt_size(o.host_mem, b1, sizeof(b1)), strerror(-rc));
    struct domain_config cfg;
    domain_config_default(&cfg);
    rc = domain_create(m, &cfg, &d);
    if (rc == 0)
        rc = o.pod_target ? domain_populate_guest_flags(d, o.guest_mem, DOMAIN_POPULATE_POD, NULL)
                          : domain_populate_guest(d, o.guest_mem, NULL);
    if (rc == 0 && o.pod_target)
        rc = pod_set_target(d, o.pod_target >> PAGE_SHIFT);
    if (rc == 0)
        rc = balloon_init(&b, d, o.guest_mem);
    if (rc < 0) {
        cli_error("balloon: building the guest failed: %s", strerror(-rc));
        goto out;
    }
    uint64_t full = balloon_current(&b);
    uint64_t t0 = hv_now_ns();
    rc = balloon_set_target(&b, o.target >> PAGE_SHIFT);
    uint64_t t1 = hv_now_ns();
    if (rc < 0) {
        cli_error("balloon: inflate failed: %s", strerror(-rc));
        goto out;
    }
    uint64_t l4 = domain_pages_4k(d), l2 = domain_pages_2m(d), l1 = domain_pages_1g(d);
    uint64_t frag_ops = 0, t2 = 0, t3 = 0;
    int drc = 0;
    if (!o.no_deflate) {
        if (o.fragment > 0) {
            domid_t churner = ++m->next_domid;
            struct frame_stats st;
            frames_get_stats(m->frames, &st);
            /* the churner ends up holding F of what is free, in 4K pieces */
            double tgt = o.fragment * (double)st.free_frames / (double)st.nr_frames;
            if (frames_fragment(m->frames, churner, tgt, 0.7, o.seed, &frag_ops) < 0)
                cli_error("balloon: could not fragment the host (continuing)");
        }
        t2 = hv_now_ns();
        drc = balloon_set_target(&b, full);
        t3 = hv_now_ns();
    }
    int audit = o.no_audit ? 0 : domain_audit(d);
    if (audit == 0 && !o.no_audit)
        audit = frames_audit(m->frames);
    double gin = (double)((full - (o.target >> PAGE_SHIFT)) << PAGE_SHIFT) / GiB;
    if (o.json) {
        struct json j;
        json_init(&j, stdout);
        json_obj_begin(&j, NULL);
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
        if (o.pod_target)
            cli_json_pod(&j, "pod", d);
        cli_json_domain(&j, "domain", d);
        json_str(&j, "audit", o.no_audit ? "skipped" : audit ? hv_audit_last() : "ok");
        json_obj_end(&j);
        json_finish(&j);
    } else {
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
            printf("audit: %s\n", audit ? hv_audit_last() : "ok (p2m, domain, PoD, frames)");
    }
    status = audit || drc < 0 ? 1 : 0;
out:
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
    {"fragment", OPT_DBL, &o.fragment, "F", "before deflating, other domains take F of free memory in 4K pieces", NULL},
    {"no-deflate", OPT_FLAG, &o.no_deflate, NULL, "stop after the inflate", NULL},
    {"seed", OPT_U64, &o.seed, "N", "seed of the fragmentation", NULL},
    {"no-audit", OPT_FLAG, &o.no_audit, NULL, "skip the audits", NULL},
    {"json", OPT_FLAG, &o.json, NULL, "machine-readable output", NULL},
    {0},
};

const struct cmd cmd_balloon = {
    .name = "balloon",
    .summary = "drive the balloon driver to a target in 2M units, and back",
    .run = run_balloon,
    .opts = balloon_opts,
};
