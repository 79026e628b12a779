/*
 * cmd_populate.c - `hugevm populate`: build a host (optionally
 * pre-fragmented by other domains' 4K churn), create and populate a guest,
 * print the allocation summary and the leaf counts.
 */
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "domain.h"

static struct {
    uint64_t guest_mem, host_mem, mmio_hole, seed;
    double fragment, mix_4k;
    const char *policy;
    bool json, no_audit;
    struct domain_config cfg;
} o = {
    .guest_mem = 8 * GiB,
    .mmio_hole = DEFAULT_MMIO_HOLE,
    .seed = 1,
    .mix_4k = 0.7,
    .policy = "fragpool",
};

/* "ADDR+SIZE" or "ADDR-END" in bytes (suffixes allowed), page aligned. */
static int parse_4k_range(void *dest, const char *arg)
{
    struct domain_config *c = dest;
    char buf[128];
    if (c->nr_4k_ranges >= DOMAIN_MAX_4K_RANGES || strlen(arg) >= sizeof(buf))
        return -EINVAL;
    strcpy(buf, arg);
    char *sep = strpbrk(buf + 1, "+-");
    if (!sep)
        return -EINVAL;
    char kind = *sep;
    *sep = 0;
    uint64_t a, b;
    if (hv_parse_size(buf, &a) < 0 || hv_parse_size(sep + 1, &b) < 0)
        return -EINVAL;
    uint64_t end = kind == '+' ? a + b : b;
    if (end <= a || a % PAGE_SIZE || end % PAGE_SIZE)
        return -EINVAL;
    c->ranges_4k[c->nr_4k_ranges++] =
        (struct gfn_range){a >> PAGE_SHIFT, (end - a) >> PAGE_SHIFT};
    return 0;
}

static void print_allocation(const struct populate_result *r, FILE *out)
{
    /* The shape of Xen's xc_hvm_build summary. */
    fprintf(out, "PHYSICAL MEMORY ALLOCATION:\n");
    fprintf(out, "  4KB PAGES: 0x%016llx\n", (unsigned long long)r->nr_4k);
    fprintf(out, "  2MB PAGES: 0x%016llx\n", (unsigned long long)r->nr_2m);
    fprintf(out, "  1GB PAGES: 0x%016llx\n", (unsigned long long)r->nr_1g);
}

static int run_populate(int argc, char **argv)
{
    (void)argv;
    struct machine *m = NULL;
    struct domain *d = NULL;
    enum frame_policy pol;
    int rc, status = 1;
    char b1[32], b2[32];

    if (argc)
        return cli_error("populate: unexpected argument '%s'", argv[0]);
    if (frame_policy_parse(o.policy, &pol) < 0)
        return cli_error("populate: unknown policy '%s' (fragpool or buddy)", o.policy);
    if (o.fragment < 0 || o.fragment >= 1 || o.mix_4k <= 0 || o.mix_4k > 1)
        return cli_error("populate: --fragment must be in [0, 1) and --mix-4k in (0, 1]");
    if (o.guest_mem == 0 || o.guest_mem % PAGE_SIZE)
        return cli_error("populate: --guest-mem must be a positive multiple of 4 KiB");
    if (!o.host_mem) {
        /* Room for the guest plus the fragmenting domains. */
        uint64_t need = o.guest_mem + o.guest_mem / 4 + 64 * MiB;
        if (o.fragment > 0)
            need = (uint64_t)((double)need / (1.0 - o.fragment)) + GiB;
        o.host_mem = (need + GiB - 1) & ~(GiB - 1);
    }
    if (o.host_mem % (2 * MiB))
        return cli_error("populate: --host-mem must be a multiple of 2 MiB");
    rc = machine_create(&m, o.host_mem, pol);
    if (rc < 0)
        return cli_error("populate: cannot create a %s machine: %s",
                         hv_fmt_size(o.host_mem, b1, sizeof(b1)), strerror(-rc));

    uint64_t churn_ops = 0, t0 = hv_now_ns();
    if (o.fragment > 0) {
        domid_t churner = ++m->next_domid;
        rc = frames_fragment(m->frames, churner, o.fragment, o.mix_4k, o.seed, &churn_ops);
        if (rc < 0) {
            cli_error("populate: cannot fragment the host to %.2f: %s", o.fragment,
                      strerror(-rc));
            goto out;
        }
    }
    uint64_t t1 = hv_now_ns();
    if (!o.json) {
        cli_print_thp(m, stdout);
        if (o.fragment > 0)
            printf("pre-fragmentation: %.0f%% of host memory held in 4K pieces by "
                   "other domains (%llu allocator ops, %.1f ms)\n",
                   o.fragment * 100, (unsigned long long)churn_ops, (t1 - t0) / 1e6);
        printf("before populate: ");
        cli_print_frames(m, stdout);
    }
    struct json j;
    if (o.json) {
        json_init(&j, stdout);
        json_obj_begin(&j, NULL);
        json_str(&j, "thp_shmem", thp_shmem_name(m->thp));
        json_bool(&j, "thp_shmem_usable", thp_shmem_usable(m->thp));
        json_dbl(&j, "fragment", o.fragment);
        json_u64(&j, "guest_bytes", o.guest_mem);
        json_u64(&j, "host_bytes", o.host_mem);
        cli_json_frames(&j, "host_before", m);
    }

    o.cfg.mmio_hole_bytes = o.mmio_hole;
    rc = domain_create(m, &o.cfg, &d);
    if (rc < 0) {
        cli_error("populate: cannot create the domain: %s", strerror(-rc));
        goto out;
    }
    struct populate_result res;
    uint64_t t2 = hv_now_ns();
    rc = domain_populate_guest(d, o.guest_mem, &res);
    uint64_t t3 = hv_now_ns();
    if (rc < 0) {
        cli_error("populate: populating %s failed: %s (nothing stays allocated)",
                  hv_fmt_size(o.guest_mem, b1, sizeof(b1)), strerror(-rc));
        goto out;
    }
    int audit = 0;
    if (!o.no_audit) {
        audit = domain_audit(d);
        if (audit == 0)
            audit = frames_audit(m->frames);
    }
    double secs = (t3 - t2) / 1e9;
    double gibps = secs > 0 ? (double)(res.pages << PAGE_SHIFT) / GiB / secs : 0;
    if (o.json) {
        json_obj_begin(&j, "populate");
        json_u64(&j, "pages", res.pages);
        json_u64(&j, "extents_1g", res.nr_1g);
        json_u64(&j, "extents_2m", res.nr_2m);
        json_u64(&j, "extents_4k", res.nr_4k);
        json_dbl(&j, "seconds", secs);
        json_dbl(&j, "gib_per_s", gibps);
        json_obj_end(&j);
        json_u64(&j, "pages_4k", domain_pages_4k(d));
        json_u64(&j, "pages_2m", domain_pages_2m(d));
        json_u64(&j, "pages_1g", domain_pages_1g(d));
        json_u64(&j, "fallbacks", d->stats.fallback_1g_nomem + d->stats.fallback_2m_nomem);
        cli_json_domain(&j, "domain", d);
        cli_json_frames(&j, "host_after", m);
        json_u64(&j, "resident_bytes", machine_resident_bytes(m));
        json_str(&j, "audit", o.no_audit ? "skipped" : audit ? hv_audit_last() : "ok");
        json_obj_end(&j);
        json_finish(&j);
    } else {
        print_allocation(&res, stdout);
        printf("populated %s in %.1f ms (%.1f GiB/s)\n",
               hv_fmt_size(res.pages << PAGE_SHIFT, b1, sizeof(b1)), secs * 1e3, gibps);
        cli_print_domain(d, stdout);
        printf("after populate: ");
        cli_print_frames(m, stdout);
        printf("host RAM committed by the machine: %s (guest memory is lazily committed)\n",
               hv_fmt_size(machine_resident_bytes(m), b2, sizeof(b2)));
        if (!o.no_audit)
            printf("audit: %s\n", audit ? hv_audit_last() : "ok (p2m, domain, frames)");
    }
    status = audit ? 1 : 0;
out:
    domain_destroy(d);
    machine_destroy(m);
    return status;
}

static struct opt populate_opts[] = {
    {"guest-mem", OPT_SIZE, &o.guest_mem, "SIZE", "guest RAM (default 8G)", NULL},
    {"host-mem", OPT_SIZE, &o.host_mem, "SIZE", "machine size (default: enough for guest and churn)", NULL},
    {"fragment", OPT_FRAC, &o.fragment, "F", "before the guest, other domains hold F of the host in 4K pieces", NULL},
    {"mix-4k", OPT_FRAC, &o.mix_4k, "F", "fraction of churn operations at 4K (rest 2M, default 0.7)", NULL},
    {"policy", OPT_STR, &o.policy, "P", "frame allocator policy: fragpool (default) or buddy", NULL},
    {"force-4k", OPT_FUNC, &o.cfg, "A+SIZE", "guest-physical range that must stay 4K (repeatable)", parse_4k_range},
    {"mmio-hole", OPT_SIZE, &o.mmio_hole, "SIZE", "MMIO hole below 4 GiB (default 256M)", NULL},
    {"seed", OPT_U64, &o.seed, "N", "seed of the fragmentation churn", NULL},
    {"no-audit", OPT_FLAG, &o.no_audit, NULL, "skip the p2m/domain/frame audits", NULL},
    {"json", OPT_FLAG, &o.json, NULL, "machine-readable output", NULL},
    {0},
};

const struct cmd cmd_populate = {
    .name = "populate",
    .summary = "populate a guest with 1G/2M/4K fallback on a (fragmented) host",
    .run = run_populate,
    .opts = populate_opts,
};
