/*
 * cmd_save.c - `hugevm save FILE`: a standalone scenario: build a guest
 * with a chosen layout (size, MMIO hole, 4K-only ranges, ballooned ranges,
 * PoD), write recognisable content, and save it as a migration stream.
 */
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli.h"
#include "safefile.h"
#include "save.h"

static struct {
    uint64_t guest_mem, host_mem, mmio_hole, seed, batch, every, pod_mem;
    const char *order, *balloon, *fill;
    bool no_optional, no_xalloc, json;
    struct domain_config cfg;
} o = {
    .guest_mem = 2 * GiB,
    .mmio_hole = DEFAULT_MMIO_HOLE,
    .seed = 1,
    .every = 64,
    .order = "gfn",
};

/* "ADDR+SIZE" in bytes, page aligned. */
static int parse_range(const char *arg, struct gfn_range *r)
{
    char buf[128];
    if (strlen(arg) >= sizeof(buf))
        return -EINVAL;
    strcpy(buf, arg);
    char *sep = strchr(buf + 1, '+');
    if (!sep)
        return -EINVAL;
    *sep = 0;
    uint64_t a, b;
    if (hv_parse_size(buf, &a) < 0 || hv_parse_size(sep + 1, &b) < 0 || !b ||
        a % PAGE_SIZE || b % PAGE_SIZE)
        return -EINVAL;
    *r = (struct gfn_range){a >> PAGE_SHIFT, b >> PAGE_SHIFT};
    return 0;
}

static int parse_4k(void *dest, const char *arg)
{
    struct domain_config *c = dest;
    if (c->nr_4k_ranges >= DOMAIN_MAX_4K_RANGES)
        return -EINVAL;
    return parse_range(arg, &c->ranges_4k[c->nr_4k_ranges++]);
}

static void print_save(const struct save_result *r, const struct domain *d, FILE *out)
{
    fprintf(out, "source allocation: pages_1g %llu pages_2m %llu pages_4k %llu "
                 "(tot_pages %llu, PoD entries %llu)\n",
            (unsigned long long)r->extents_1g, (unsigned long long)r->extents_2m,
            (unsigned long long)r->pages_4k, (unsigned long long)d->tot_pages,
            (unsigned long long)r->pod_entries);
    cli_print_saved(out, r);
}

static int run_save(int argc, char **argv)
{
    struct machine *m = NULL;
    struct domain *d = NULL;
    int status = 1, rc;
    struct safefile out = {.fd = -1, .dirfd = -1};
    char err[256];
    if (argc != 1)
        return cli_error("save: need exactly one output FILE (see hugevm save --help)");
    enum save_page_order order;
    if (!strcmp(o.order, "gfn"))
        order = SAVE_ORDER_GFN;
    else if (!strcmp(o.order, "reverse"))
        order = SAVE_ORDER_REVERSE;
    else if (!strcmp(o.order, "random"))
        order = SAVE_ORDER_RANDOM;
    else
        return cli_error("save: --order must be gfn, reverse or random");
    if (!o.guest_mem || o.guest_mem % PAGE_SIZE || o.batch > SAVE_MAX_BATCH || !o.every)
        return cli_error("save: bad --guest-mem, --batch (at most %u) or --every", SAVE_MAX_BATCH);
    if (o.fill && o.balloon)
        return cli_error("save: --fill and --balloon do not go together (--fill covers all RAM)");
    if (!o.host_mem)
        o.host_mem = ((o.guest_mem + o.pod_mem + GiB) + GiB - 1) & ~(GiB - 1);
    if (cli_machine_create("save", &m, o.host_mem, false, NULL) < 0)
        return 1;
    o.cfg.mmio_hole_bytes = o.mmio_hole;
    rc = domain_create(m, &o.cfg, &d);
    if (rc < 0) {
        cli_error("save: cannot create the domain: %s", strerror(-rc));
        goto out;
    }
    rc = domain_populate_guest(d, o.guest_mem, NULL);
    if (rc < 0) {
        cli_error("save: populating the guest failed: %s", strerror(-rc));
        goto out;
    }
    if (o.balloon) {
        struct gfn_range r;
        if (parse_range(o.balloon, &r) < 0) {
            cli_error("save: --balloon wants ADDR+SIZE");
            goto out;
        }
        long n = domain_decrease_reservation(d, r.gfn, r.nr);
        if (n < 0) {
            cli_error("save: balloon: %s", strerror((int)-n));
            goto out;
        }
    }
    if (o.pod_mem) {
        /* PoD entries right after the guest's RAM */
        struct gfn_range r[2];
        unsigned n = domain_guest_layout(d, o.guest_mem, r);
        gfn_t at = r[n - 1].gfn + r[n - 1].nr;
        at = (at + 511) & ~511ULL;
        if (at < GFN_4G && at + (o.pod_mem >> PAGE_SHIFT) > d->mmio_hole_start)
            at = GFN_4G;
        rc = domain_populate_flags(d, at, o.pod_mem >> PAGE_SHIFT, DOMAIN_POPULATE_POD, NULL);
        if (rc < 0) {
            cli_error("save: PoD entries: %s", strerror(-rc));
            goto out;
        }
    }
    /* The content: the --fill file's bytes, or recognisable content (one
     * page in `every` carries its gfn). */
    if (o.fill && cli_fill_from_file("save", d, o.guest_mem, o.fill) != 0)
        goto out;
    struct hv_rng rng = {o.seed};
    for (gfn_t g = 0; !o.fill && g < P2M_GFN_LIMIT;) {
        enum p2m_type t;
        unsigned lo;
        mfn_t mfn = p2m_get_entry(d->p2m, g, &t, &lo);
        uint64_t step = order_pages(lo) - (g & (order_pages(lo) - 1));
        if (t == p2m_invalid && lo == MAX_ORDER && g >= (GFN_4G << 4))
            break;
        if (p2m_is_ram(t))
            for (uint64_t i = 0; i < step; i++)
                if (hv_rng_below(&rng, o.every) == 0) {
                    uint64_t *p = machine_ptr(m, mfn + i);
                    for (unsigned k = 0; k < PAGE_SIZE / 8; k += 64)
                        p[k] = 0x68756765766d0000ULL ^ (g + i) ^ ((uint64_t)k << 40);
                }
        g += step;
    }
    rc = safefile_create(&out, argv[0]);
    if (rc < 0) {
        cli_error("save: %s: %s", argv[0], rc == -EEXIST ? "the file exists already (it is "
                  "never replaced: remove it or give another name)" : strerror(-rc));
        goto out;
    }
    struct stream_fd sf;
    struct stream_io io;
    if (stream_fd_open(&sf, &io, out.fd) < 0) {
        cli_error("save: out of memory");
        goto out;
    }
    stream_fd_alias(&sf, m->base, m->bytes, m->fd); /* page data: sendfile from the memfd */
    struct save_opts so = {.no_optional = o.no_optional, .no_xalloc = o.no_xalloc,
                           .batch = (uint32_t)o.batch, .order = order, .seed = o.seed,
                           .progress = cli_save_progress};
    struct save_result sr;
    rc = stream_save(d, &io, &so, &sr, err, sizeof(err));
    stream_fd_free(&sf);
    if (rc == 0 && (rc = safefile_commit(&out)) < 0)
        snprintf(err, sizeof(err), "%s", strerror(-rc));
    if (rc < 0) {
        cli_error("save: %s: %s (nothing was written under that name)", argv[0], err);
        goto out;
    }
    if (o.json) {
        struct json j;
        json_init(&j, stdout);
        json_obj_begin(&j, NULL);
        json_str(&j, "file", argv[0]);
        json_u64(&j, "bytes", sr.bytes);
        json_u64(&j, "records", sr.records);
        json_u64(&j, "page_data_records", sr.page_data_records);
        json_u64(&j, "pages_data", sr.pages_data);
        json_u64(&j, "pages_zero", sr.pages_zero);
        json_u64(&j, "pages_xtab", sr.pages_xtab);
        json_u64(&j, "pod_entries", sr.pod_entries);
        json_dbl(&j, "seconds", sr.seconds);
        cli_json_domain(&j, "domain", d);
        json_obj_end(&j);
        json_finish(&j);
    } else {
        printf("saved domain %u to %s\n", d->domid, argv[0]);
        print_save(&sr, d, stdout);
    }
    status = 0;
out:
    safefile_abort(&out); /* after a failure: no partial file is left */
    domain_destroy(d);
    machine_destroy(m);
    return status;
}

static struct opt save_opts_table[] = {
    {"guest-mem", OPT_SIZE, &o.guest_mem, "SIZE", "guest RAM (default 2G)", NULL},
    {"host-mem", OPT_SIZE, &o.host_mem, "SIZE", "machine size (default: guest + 1G)", NULL},
    {"mmio-hole", OPT_SIZE, &o.mmio_hole, "SIZE", "MMIO hole below 4 GiB (default 256M)", NULL},
    {"force-4k", OPT_FUNC, &o.cfg, "A+SIZE", "guest-physical range that must stay 4K (repeatable)", parse_4k},
    {"balloon", OPT_STR, &o.balloon, "A+SIZE", "give this range back before saving (holes inside extents)", NULL},
    {"pod", OPT_SIZE, &o.pod_mem, "SIZE", "add SIZE of PoD entries after the RAM", NULL},
    {"every", OPT_U64, &o.every, "N", "write content into one page in N (default 64; rest zero)", NULL},
    {"fill", OPT_STR, &o.fill, "FILE", "guest RAM is FILE's bytes from gfn 0 (the rest zero; "
     "instead of --every's content): the same content as another hypervisor's file-backed RAM", NULL},
    {"order", OPT_STR, &o.order, "O", "page order in the stream: gfn (default), reverse, random", NULL},
    {"batch", OPT_U64, &o.batch, "N", "pfns per PAGE_DATA record (default 1024)", NULL},
    {"no-optional", OPT_FLAG, &o.no_optional, NULL, "write no optional (hugevm) records", NULL},
    {"no-xalloc", OPT_FLAG, &o.no_xalloc, NULL, "send zero pages with their data", NULL},
    {"seed", OPT_U64, &o.seed, "N", "seed of the content and of --order random", NULL},
    {"json", OPT_FLAG, &o.json, NULL, "machine-readable output", NULL},
    {0},
};

const struct cmd cmd_save = {
    .name = "save",
    .summary = "build a guest scenario and save it as a Xen-layout migration stream",
    .usage_extra = "FILE",
    .run = run_save,
    .opts = save_opts_table,
};
