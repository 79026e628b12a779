/*
 * cmd_restore.c - `hugevm restore FILE`: restore a migration stream onto a
 * fresh machine, print the allocation summary (what was allocated at first
 * touch, what was freed, the leaves obtained, and what Xen's 2025 rule
 * gets on the same stream), audit, and say whether the vCPU state is
 * usable.
 */
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cli.h"
#include "save.h"

static struct {
    uint64_t host_mem;
    bool json, ignore_layout;
} o;

static uint64_t file_bytes;

static void restore_progress(void *ctx, uint64_t done)
{
    (void)ctx;
    if (file_bytes >= 256 * MiB)
        cli_progress("restore", done, file_bytes);
}

static int run_restore(int argc, char **argv)
{
    struct machine *m = NULL;
    int status = 1, rc;
    char b1[32];
    if (argc != 1)
        return cli_error("restore: need exactly one stream FILE");
    int fd = open(argv[0], O_RDONLY);
    if (fd < 0)
        return cli_error("restore: %s: %s", argv[0], strerror(errno));
    struct stat st;
    file_bytes = fstat(fd, &st) == 0 ? (uint64_t)st.st_size : 0;
    if (!o.host_mem) {
        /* enough for the stream's pages with room for speculative extents */
        o.host_mem = ((file_bytes * 2 + 4 * GiB) + GiB - 1) & ~(GiB - 1);
    }
    rc = machine_create(&m, o.host_mem, FRAME_POLICY_FRAGPOOL);
    if (rc < 0) {
        close(fd);
        return cli_error("restore: cannot create a %s machine: %s",
                         hv_fmt_size(o.host_mem, b1, sizeof(b1)), strerror(-rc));
    }
    struct stream_fd sf;
    struct stream_io io;
    struct restore_result rr;
    if (stream_fd_open(&sf, &io, fd) < 0) {
        cli_error("restore: out of memory");
        goto out;
    }
    struct restore_opts ro = {.ignore_layout = o.ignore_layout, .progress = restore_progress};
    rc = stream_restore(m, &io, &ro, &rr);
    stream_fd_free(&sf);
    if (rc < 0) {
        cli_error("restore: %s: %s (%s; nothing stays allocated)", argv[0], rr.err,
                  strerror(-rc));
        goto out;
    }
    int audit = domain_audit(rr.d);
    if (audit == 0)
        audit = frames_audit(m->frames);
    if (o.json) {
        struct json j;
        json_init(&j, stdout);
        json_obj_begin(&j, NULL);
        json_str(&j, "file", argv[0]);
        json_u64(&j, "bytes", rr.bytes);
        json_u64(&j, "records", rr.records);
        json_u64(&j, "pages_data", rr.pages_data);
        json_u64(&j, "pages_xalloc", rr.pages_xalloc);
        json_u64(&j, "pages_xtab", rr.pages_xtab);
        json_u64(&j, "prealloc_1g", rr.prealloc_1g);
        json_u64(&j, "prealloc_2m", rr.prealloc_2m);
        json_u64(&j, "first_touch_1g", rr.spec_1g);
        json_u64(&j, "first_touch_2m", rr.spec_2m);
        json_u64(&j, "first_touch_4k", rr.alloc_4k);
        json_u64(&j, "fallback_nomem", rr.fallback_nomem);
        json_u64(&j, "freed_unfilled_pages", rr.freed_pages);
        json_u64(&j, "xen_rule_pages_2m", rr.xen_2m);
        json_u64(&j, "xen_rule_pages_4k", rr.xen_4k);
        json_u64(&j, "pod_entries", rr.pod_entries);
        json_bool(&j, "vcpu_state_usable", rr.vcpu == RESTORE_VCPU_HUGEVM);
        json_str(&j, "note", rr.note);
        json_dbl(&j, "seconds", rr.seconds);
        cli_json_domain(&j, "domain", rr.d);
        json_str(&j, "audit", audit ? hv_audit_last() : "ok");
        json_obj_end(&j);
        json_finish(&j);
    } else {
        printf("restored %s (stream v%u from Xen %u.%u, %llu records, %s) in %.1f ms\n", argv[0],
               rr.version, rr.xen_major, rr.xen_minor, (unsigned long long)rr.records,
               hv_fmt_size(rr.bytes, b1, sizeof(b1)), rr.seconds * 1e3);
        printf("pages: %llu with data, %llu zero (XALLOC), %llu holes (XTAB), %llu broken\n",
               (unsigned long long)rr.pages_data, (unsigned long long)rr.pages_xalloc,
               (unsigned long long)rr.pages_xtab, (unsigned long long)rr.pages_broken);
        printf("PHYSICAL MEMORY ALLOCATION:\n");
        printf("  up front from HV_LAYOUT: 1GB %llu, 2MB %llu\n",
               (unsigned long long)rr.prealloc_1g, (unsigned long long)rr.prealloc_2m);
        printf("  at first touch:          1GB %llu, 2MB %llu, 4KB %llu\n",
               (unsigned long long)rr.spec_1g, (unsigned long long)rr.spec_2m,
               (unsigned long long)rr.alloc_4k);
        printf("  freed at END (speculative, never filled): %llu 4KB pages\n",
               (unsigned long long)rr.freed_pages);
        if (rr.fallback_nomem)
            printf("  WARNING: %llu superpage allocation(s) fell back: machine memory is "
                   "fragmented\n", (unsigned long long)rr.fallback_nomem);
        printf("leaves: hugevm pages_1g %llu pages_2m %llu pages_4k %llu; "
               "Xen 2025 rule on this stream: pages_2m %llu pages_4k %llu\n",
               (unsigned long long)rr.pages_1g, (unsigned long long)rr.pages_2m,
               (unsigned long long)rr.pages_4k, (unsigned long long)rr.xen_2m,
               (unsigned long long)rr.xen_4k);
        if (rr.pod_entries)
            printf("PoD: %llu entries, target %llu pages\n", (unsigned long long)rr.pod_entries,
                   (unsigned long long)rr.pod_target);
        cli_print_domain(rr.d, stdout);
        printf("vCPU state: %s\n", rr.vcpu == RESTORE_VCPU_HUGEVM
                                       ? "hugevm context present (restored by the vCPU layer)"
                                       : rr.note);
        printf("audit: %s\n", audit ? hv_audit_last() : "ok (p2m, domain, frames)");
    }
    status = audit ? 1 : 0;
    domain_destroy(rr.d);
    restore_result_free(&rr);
out:
    close(fd);
    machine_destroy(m);
    return status;
}

static struct opt restore_opts_table[] = {
    {"host-mem", OPT_SIZE, &o.host_mem, "SIZE", "machine size (default: 2 x stream + 4G)", NULL},
    {"ignore-layout", OPT_FLAG, &o.ignore_layout, NULL, "do not pre-allocate from the HV_LAYOUT record", NULL},
    {"json", OPT_FLAG, &o.json, NULL, "machine-readable output", NULL},
    {0},
};

const struct cmd cmd_restore = {
    .name = "restore",
    .summary = "restore a migration stream, superpages first, and show the allocation",
    .usage_extra = "FILE",
    .run = run_restore,
    .opts = restore_opts_table,
};
