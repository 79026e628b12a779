/*
 * cmd_inspect.c - `hugevm inspect FILE`: validate a migration stream
 * without building a domain (a dry-run restore), print its records (runs of
 * PAGE_DATA collapsed), page-type counts, the configuration and layout it
 * describes, the leaves a restore would build against Xen's 2025 rule, and
 * the first problem found.
 */
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli.h"
#include "guest.h"
#include "guest_state.h"
#include "migrate.h"
#include "save.h"

static struct {
    bool json;
} o;

/* Collapses consecutive records of one type. */
struct rec_printer {
    struct json *j;
    uint64_t first, n, offset, bytes;
    uint32_t type;
};

static void flush_run(struct rec_printer *p)
{
    if (!p->n)
        return;
    char name[48];
    snprintf(name, sizeof(name), "%s", stream_rec_name(p->type));
    if (p->j) {
        json_obj_begin(p->j, NULL);
        json_u64(p->j, "index", p->first);
        json_u64(p->j, "offset", p->offset);
        json_str(p->j, "type", name);
        json_u64(p->j, "type_code", p->type);
        json_u64(p->j, "count", p->n);
        json_u64(p->j, "body_bytes", p->bytes);
        json_obj_end(p->j);
    } else if (p->n == 1) {
        printf("  #%-6llu @%-12llu %-18s (%#010x) %10llu bytes\n",
               (unsigned long long)p->first, (unsigned long long)p->offset, name, p->type,
               (unsigned long long)p->bytes);
    } else {
        printf("  #%-6llu @%-12llu %-18s (%#010x) %10llu bytes in %llu records\n",
               (unsigned long long)p->first, (unsigned long long)p->offset, name, p->type,
               (unsigned long long)p->bytes, (unsigned long long)p->n);
    }
    p->n = 0;
}

static void on_record(void *ctx, uint64_t index, uint32_t type, uint32_t length,
                      uint64_t offset)
{
    struct rec_printer *p = ctx;
    if (p->n && p->type == type) {
        p->n++;
        p->bytes += length;
        return;
    }
    flush_run(p);
    *p = (struct rec_printer){.j = p->j, .first = index, .n = 1, .offset = offset,
                              .bytes = length, .type = type};
}

static int run_inspect(int argc, char **argv)
{
    if (argc != 1)
        return cli_error("inspect: need exactly one stream FILE");
    int fd = open(argv[0], O_RDONLY);
    if (fd < 0)
        return cli_error("inspect: %s: %s", argv[0], strerror(errno));
    struct stream_fd sf;
    struct stream_io io;
    if (stream_fd_open(&sf, &io, fd) < 0) {
        close(fd);
        return cli_error("inspect: out of memory");
    }
    struct json j;
    struct rec_printer pr = {0};
    if (o.json) {
        json_init(&j, stdout);
        json_obj_begin(&j, NULL);
        json_str(&j, "file", argv[0]);
        json_arr_begin(&j, "records");
        pr.j = &j;
    } else {
        printf("%s:\n", argv[0]);
    }
    struct restore_opts ro = {.dry_run = true, .verify_checksum = true, .on_record = on_record,
                              .record_ctx = &pr};
    struct restore_result rr;
    int rc = stream_restore(NULL, &io, &ro, &rr);
    flush_run(&pr);
    stream_fd_free(&sf);
    close(fd);
    const struct stream_config *c = &rr.config;
    /* The vCPU state, decoded and checked as `restore --run` would. */
    char vnote[600];
    bool vusable = false;
    if (rc == 0 && rr.vcpu == RESTORE_VCPU_HUGEVM) {
        struct guest_state *gs = hv_calloc(1, sizeof(*gs));
        char why[256] = "";
        int vs = gs ? guest_state_decode(rr.context, rr.context_len, gs, why, sizeof(why))
                    : -ENOMEM;
        if (vs == 1 && rr.have_config && guest_state_check(gs, c->max_pages, why, sizeof(why)) < 0)
            vs = -EINVAL;
        struct guest_prog_state *ps = vs == 0 ? hv_malloc(sizeof(*ps)) : NULL;
        int pv = ps ? guest_prog_decode(rr.context, rr.context_len, ps, why, sizeof(why)) : 0;
        if (vs == 1)
            snprintf(vnote, sizeof(vnote), "hugevm context: %u vCPU(s), workload %s: resumable",
                     gs->nr_vcpus, workload_name(gs->v[0].wc.kind));
        else if (pv == 1)
            snprintf(vnote, sizeof(vnote), "hugevm program guest: %u vCPU(s) of the %s backend%s: "
                     "resumable (restore --run)", ps->nr_vcpus,
                     guest_backend_name(guest_prog_state_backend(ps)),
                     ps->has_xsave ? ", with their XSAVE areas and MSRs" : "");
        else if (pv < 0)
            snprintf(vnote, sizeof(vnote), "corrupt: %s: vCPU state not usable", why);
        else if (vs == 0)
            snprintf(vnote, sizeof(vnote), "%s: vCPU state not usable", why);
        else
            snprintf(vnote, sizeof(vnote), "corrupt: %s: vCPU state not usable",
                     gs ? why : "out of memory");
        vusable = vs == 1 || pv == 1;
        free(ps);
        free(gs);
        struct migrate_pc_state pcs;
        if (migrate_pc_state_decode(rr.context, rr.context_len, NULL, &pcs, why,
                                    sizeof(why)) == 1) {
            uint64_t n = migrate_pc_state_pending(&pcs);
            size_t l = strlen(vnote);
            snprintf(vnote + l, sizeof(vnote) - l, "; a post-copy sender's copy in doubt "
                     "(post-copy %#llx, %llu page(s) left for after the switch): hugevm migrate "
                     "--resume-postcopy finishes that migration", (unsigned long long)pcs.id,
                     (unsigned long long)n);
        }
        migrate_pc_state_free(&pcs);
    } else {
        snprintf(vnote, sizeof(vnote), "%s", rr.note[0] ? rr.note : "vCPU state not usable");
    }
    const char *csum = !rr.have_checksum      ? "none"
                       : rr.checksum_verified ? "verified"
                       : rc == 0              ? "present"
                                              : "present, not verified";
    if (o.json) {
        json_arr_end(&j);
        json_bool(&j, "valid", rc == 0);
        json_str(&j, "problem", rc ? rr.err : "");
        json_u64(&j, "version", rr.version);
        json_u64(&j, "bytes", rr.bytes);
        json_u64(&j, "records_count", rr.records);
        json_u64(&j, "pages_data", rr.pages_data);
        json_u64(&j, "pages_xalloc", rr.pages_xalloc);
        json_u64(&j, "pages_xtab", rr.pages_xtab);
        json_u64(&j, "pages_broken", rr.pages_broken);
        json_bool(&j, "hugevm_config", rr.have_config);
        if (rr.have_config) {
            json_u64(&j, "max_pages", c->max_pages);
            json_u64(&j, "max_gfn", c->max_gfn);
            json_u64(&j, "mmio_hole_bytes", c->mmio_hole_bytes);
            json_bool(&j, "vga_hole", c->vga_hole);
            json_u64(&j, "ranges_4k", c->nr_4k_ranges);
        }
        json_bool(&j, "layout_record", rr.have_layout);
        json_u64(&j, "layout_1g", rr.layout_1g);
        json_u64(&j, "layout_2m", rr.layout_2m);
        json_u64(&j, "pod_entries", rr.pod_entries);
        json_u64(&j, "restore_pages_1g", rr.pages_1g);
        json_u64(&j, "restore_pages_2m", rr.pages_2m);
        json_u64(&j, "restore_pages_4k", rr.pages_4k);
        json_u64(&j, "xen_rule_pages_2m", rr.xen_2m);
        json_u64(&j, "xen_rule_pages_4k", rr.xen_4k);
        json_bool(&j, "vcpu_state_usable", vusable);
        json_str(&j, "vcpu_state", vnote);
        json_str(&j, "checksum", csum);
        json_obj_end(&j);
        json_finish(&j);
    } else {
        printf("stream v%u from Xen %u.%u: %llu records, %llu bytes read\n", rr.version,
               rr.xen_major, rr.xen_minor, (unsigned long long)rr.records,
               (unsigned long long)rr.bytes);
        printf("pages: %llu with data (NOTAB), %llu XALLOC, %llu XTAB, %llu BROKEN; "
               "%llu distinct pfns populated\n",
               (unsigned long long)rr.pages_data, (unsigned long long)rr.pages_xalloc,
               (unsigned long long)rr.pages_xtab, (unsigned long long)rr.pages_broken,
               (unsigned long long)rr.pages_populated);
        if (rr.have_config) {
            printf("hugevm configuration: max_pages %llu, max_gfn %#llx, MMIO hole %llu MiB, "
                   "VGA hole %s, %u 4K-only range(s)\n",
                   (unsigned long long)c->max_pages, (unsigned long long)c->max_gfn,
                   (unsigned long long)(c->mmio_hole_bytes / MiB), c->vga_hole ? "yes" : "no",
                   c->nr_4k_ranges);
            for (unsigned i = 0; i < c->nr_4k_ranges; i++)
                printf("  4K-only: gfn %#llx + %llu\n", (unsigned long long)c->ranges_4k[i].gfn,
                       (unsigned long long)c->ranges_4k[i].nr);
        } else {
            printf("no hugevm configuration (another producer, or a truncated stream)\n");
        }
        if (rr.have_layout)
            printf("source layout (HV_LAYOUT): %llu x 1G, %llu x 2M extents\n",
                   (unsigned long long)rr.layout_1g, (unsigned long long)rr.layout_2m);
        if (rr.pod_entries)
            printf("PoD entries: %llu\n", (unsigned long long)rr.pod_entries);
        if (rc == 0) {
            printf("a restore builds: pages_1g %llu pages_2m %llu pages_4k %llu "
                   "(Xen 2025 rule: pages_2m %llu pages_4k %llu)\n",
                   (unsigned long long)rr.pages_1g, (unsigned long long)rr.pages_2m,
                   (unsigned long long)rr.pages_4k, (unsigned long long)rr.xen_2m,
                   (unsigned long long)rr.xen_4k);
            printf("vCPU state: %s\n", vnote);
            printf("stream checksum (HV_CHECKSUM): %s\n", csum);
            printf("valid: yes\n");
        } else {
            printf("PROBLEM: %s\n", rr.err);
        }
    }
    restore_result_free(&rr);
    return rc ? 1 : 0;
}

static struct opt inspect_opts_table[] = {
    {"json", OPT_FLAG, &o.json, NULL, "machine-readable output", NULL},
    {0},
};

const struct cmd cmd_inspect = {
    .name = "inspect",
    .summary = "validate a migration stream and describe its records and layout",
    .usage_extra = "FILE",
    .run = run_inspect,
    .opts = inspect_opts_table,
};
