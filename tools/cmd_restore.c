/*
 * cmd_restore.c - `hugevm restore FILE`: restore a migration stream onto a
 * fresh machine, print the allocation summary (what was allocated at first
 * touch, what was freed, the leaves obtained, and what Xen's 2025 rule
 * gets on the same stream), audit, and say whether the vCPU state is
 * usable.  With --run, rebuild the soft vCPUs and workloads from the
 * stream's vCPU state (guest_state.h) and resume the workload where the
 * source stopped, then report the accesses made since, the leaves and the
 * audits.  Exit status: 0 ok, 1 error (or an audit failed), 2 --run was
 * asked but the stream carries no usable vCPU state (memory was restored
 * and audited all the same); with --run, corrupt vCPU state is an error (1).
 */
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cli.h"
#include "guest.h"
#include "guest_state.h"
#include "migrate.h"
#include "save.h"

static struct {
    uint64_t host_mem, accesses;
    double seconds;
    bool json, ignore_layout, run, no_audit, resident;
    const char *backend;
} o = {.backend = "auto"};

static uint64_t file_bytes;


static int run_restore(int argc, char **argv)
{
    struct machine *m = NULL;
    int status = 1, rc;
    if (argc != 1)
        return cli_error("restore: need exactly one stream FILE");
    if (o.seconds < 0 || (o.seconds > 0 && o.accesses))
        return cli_error("restore: give --seconds or --accesses, not both");
    if ((o.seconds > 0 || o.accesses) && !o.run)
        return cli_error("restore: --accesses and --seconds go with --run");
    int fd = open(argv[0], O_RDONLY);
    if (fd < 0)
        return cli_error("restore: %s: %s", argv[0], strerror(errno));
    struct stat st;
    file_bytes = fstat(fd, &st) == 0 ? (uint64_t)st.st_size : 0;
    if (!o.host_mem)
        o.host_mem = cli_restore_host_mem(file_bytes);
    if (cli_machine_create("restore", &m, o.host_mem, o.resident, o.json ? NULL : stdout) < 0) {
        close(fd);
        return 1;
    }
    struct stream_fd sf;
    struct stream_io io;
    struct restore_result rr;
    if (stream_fd_open(&sf, &io, fd) < 0) {
        cli_error("restore: out of memory");
        goto out;
    }
    stream_fd_alias(&sf, m->base, m->bytes, m->fd); /* page data: splice into the memfd */
    struct restore_opts ro = {.ignore_layout = o.ignore_layout, .verify_checksum = true,
                              .progress = cli_restore_progress, .progress_ctx = &file_bytes};
    rc = stream_restore(m, &io, &ro, &rr);
    stream_fd_free(&sf);
    if (rc < 0) {
        cli_error("restore: %s: %s (%s; nothing stays allocated)", argv[0], rr.err,
                  strerror(-rc));
        goto out;
    }
    /* A post-copy sender's copy in doubt: the receiver may still run it. */
    if (rr.vcpu == RESTORE_VCPU_HUGEVM) {
        struct migrate_pc_state pcs;
        char pwhy[300];
        if (migrate_pc_state_decode(rr.context, rr.context_len, rr.d, &pcs, pwhy,
                                    sizeof(pwhy)) == 1)
            fprintf(stderr, "hugevm: restore: %s is a post-copy sender's copy, saved in doubt "
                    "at the switch (post-copy %#llx): the receiver may still run this guest, "
                    "waiting for its pages; `hugevm migrate --resume-postcopy %s --to ADDR` "
                    "finishes that migration.  Resume this copy only if the receiver gave the "
                    "guest up.\n", argv[0], (unsigned long long)pcs.id, argv[0]);
        migrate_pc_state_free(&pcs);
    }
    /* The vCPU state: usable, absent or foreign, or corrupt. */
    struct guest_state *gs = hv_calloc(1, sizeof(*gs));
    char vnote[320];
    int vstate = 0; /* 1 usable, 0 not usable, < 0 corrupt */
    if (!gs) {
        cli_error("restore: out of memory");
        goto out_dom;
    }
    if (rr.vcpu == RESTORE_VCPU_HUGEVM) {
        char why[256] = "";
        vstate = guest_state_decode(rr.context, rr.context_len, gs, why, sizeof(why));
        if (vstate == 1 && guest_state_check(gs, rr.d->max_pages, why, sizeof(why)) < 0)
            vstate = -EINVAL;
        if (vstate == 1)
            snprintf(vnote, sizeof(vnote), "%u vCPU(s), workload %s, seed %llu: resumable%s",
                     gs->nr_vcpus, workload_name(gs->v[0].wc.kind),
                     (unsigned long long)gs->v[0].wc.seed, o.run ? "" : " (use --run)");
        else if (vstate == 0)
            snprintf(vnote, sizeof(vnote), "%s: memory restored, vCPU state not usable", why);
        else
            snprintf(vnote, sizeof(vnote), "corrupt: %s: memory restored, vCPU state not usable",
                     why);
    } else {
        snprintf(vnote, sizeof(vnote), "%s", rr.note[0] ? rr.note : "vCPU state not usable");
    }
    uint64_t b4k = domain_pages_4k(rr.d), b2m = domain_pages_2m(rr.d), b1g = domain_pages_1g(rr.d);

    /* A program guest resumes on the backend it was saved from (run_guest.c). */
    if (o.run && rr.vcpu == RESTORE_VCPU_HUGEVM) {
        struct guest_prog_state *ps = hv_malloc(sizeof(*ps));
        char why[256] = "";
        int pr = ps ? guest_prog_decode(rr.context, rr.context_len, ps, why, sizeof(why))
                    : -ENOMEM;
        if (pr != 0) {
            int backend;
            char bwhy[300];
            const char *bname = pr > 0 ? guest_backend_name(guest_prog_state_backend(ps)) : "";
            if (pr < 0) {
                cli_error("restore: --run: the program guest's vCPU state: %s", why);
            } else if (strcmp(o.backend, "auto") && strcmp(o.backend, bname)) {
                cli_error("restore: --run: this guest ran on the %s backend: its vCPUs resume "
                          "under --backend %s only", bname, bname);
            } else if (!strcmp(bname, "native") && strcmp(o.backend, "native")) {
                cli_error("restore: --run: this guest ran on the native backend, whose code "
                          "runs as this process's own: give --backend native if you trust "
                          "the file");
            } else if (o.accesses) {
                cli_error("restore: --run of a program guest: give --seconds (it runs its own "
                          "operation count, or for that long)");
            } else if (cli_backend("restore", bname, NULL, true, &backend, bwhy, sizeof(bwhy)) == 0) {
                char awhy[96];
                snprintf(awhy, sizeof(awhy), "auto: the stream holds a %s guest's vCPUs", bname);
                struct cli_prog_run pr_args = {
                    .backend = backend, .why = o.backend[0] == 'a' ? awhy : bwhy,
                    .vcpus = ps->nr_vcpus,
                    .seconds = o.seconds > 0 ? o.seconds : 2,
                    .accesses = o.accesses, .json = o.json, .no_audit = o.no_audit,
                    .resume = ps, .workload = "uniform", .guest_page = "auto",
                    .write_frac = -1,
                };
                status = cli_run_program(rr.d, &pr_args);
            }
            free(ps);
            goto out_dom; /* frees gs */
        }
        free(ps);
    }

    /* --run: resume the workload. */
    struct vcpu *v[GUEST_STATE_MAX_VCPUS] = {0};
    struct workload *w[GUEST_STATE_MAX_VCPUS] = {0};
    struct workload_result wr = {0};
    struct vcpu_stats vs = {0};
    uint64_t writes0 = 0;
    bool resumed = false;
    int run_rc = 0;
    char rerr[320] = "";
    if (o.run && vstate == 1) {
        run_rc = guest_state_build(rr.d, gs, NULL, NULL, v, w, rerr, sizeof(rerr));
        if (run_rc == 0) {
            for (unsigned i = 0; i < gs->nr_vcpus; i++) {
                struct workload_state ws;
                workload_get_state(w[i], &ws);
                writes0 += ws.writes;
            }
            uint64_t acc = o.accesses, ns = o.seconds > 0 ? (uint64_t)(o.seconds * 1e9) : 0;
            if (!acc && !ns)
                acc = 10000000;
            run_rc = workload_run(v, w, gs->nr_vcpus, acc, ns, &wr);
            resumed = true;
            if (run_rc < 0)
                snprintf(rerr, sizeof(rerr), "the resumed workload stopped: %s",
                         strerror(-run_rc));
            for (unsigned i = 0; i < gs->nr_vcpus; i++) {
#define X(name, desc) vs.name += v[i]->st.name;
                VCPU_STAT_FIELDS(X)
#undef X
            }
        }
        if (run_rc < 0)
            cli_error("restore: --run: %s", rerr);
    }
    int audit = 0;
    if (!o.no_audit) {
        audit = domain_audit(rr.d);
        if (audit == 0)
            audit = frames_audit(m->frames);
    }
    double secs = (double)wr.ns / 1e9;
    if (o.json) {
        struct json j;
        json_init(&j, stdout);
        json_obj_begin(&j, NULL);
        json_str(&j, "file", argv[0]);
        cli_json_machine_memory(&j, m);
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
        if (rr.have_layout) {
            json_obj_begin(&j, "source_layout");
            json_u64(&j, "pages_2m", rr.layout_2m);
            json_u64(&j, "pages_1g", rr.layout_1g);
            json_obj_end(&j);
        }
        json_obj_begin(&j, "leaves_restored");
        json_u64(&j, "pages_4k", b4k);
        json_u64(&j, "pages_2m", b2m);
        json_u64(&j, "pages_1g", b1g);
        json_obj_end(&j);
        json_bool(&j, "vcpu_state_usable", vstate == 1);
        json_str(&j, "checksum", rr.checksum_verified ? "verified" : "none");
        json_str(&j, "note", vnote);
        if (vstate == 1) {
            json_obj_begin(&j, "vcpu_state");
            json_u64(&j, "vcpus", gs->nr_vcpus);
            json_str(&j, "workload", workload_name(gs->v[0].wc.kind));
            json_u64(&j, "seed", gs->v[0].wc.seed);
            uint64_t wsum = 0;
            for (unsigned i = 0; i < gs->nr_vcpus; i++)
                wsum += gs->v[i].ws.writes;
            json_u64(&j, "writes_before_save", wsum);
            json_obj_end(&j);
        }
        json_bool(&j, "resumed", resumed && run_rc == 0);
        if (resumed) {
            json_obj_begin(&j, "run");
            json_u64(&j, "vcpus", gs->nr_vcpus);
            json_u64(&j, "accesses", wr.accesses);
            json_u64(&j, "writes", wr.writes);
            json_dbl(&j, "seconds", secs);
            json_dbl(&j, "accesses_per_s", secs > 0 ? (double)wr.accesses / secs : 0);
            json_u64(&j, "checksum", wr.checksum);
            json_obj_begin(&j, "vcpu");
#define X(name, desc) json_u64(&j, #name, vs.name);
            VCPU_STAT_FIELDS(X)
#undef X
            json_obj_end(&j);
            json_obj_end(&j);
        }
        if (run_rc < 0)
            json_str(&j, "error", rerr);
        json_dbl(&j, "seconds", rr.seconds);
        cli_json_domain(&j, "domain", rr.d);
        json_str(&j, "audit", o.no_audit ? "skipped" : audit ? hv_audit_last() : "ok");
        json_obj_end(&j);
        json_finish(&j);
    } else {
        printf("restored %s (stream v%u from Xen %u.%u)\n", argv[0], rr.version, rr.xen_major,
               rr.xen_minor);
        cli_print_restored(stdout, &rr);
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
               (unsigned long long)b1g, (unsigned long long)b2m, (unsigned long long)b4k,
               (unsigned long long)rr.xen_2m, (unsigned long long)rr.xen_4k);
        if (rr.have_layout)
            printf("source (HV_LAYOUT): pages_1g %llu pages_2m %llu\n",
                   (unsigned long long)rr.layout_1g, (unsigned long long)rr.layout_2m);
        if (rr.pod_entries)
            printf("PoD: %llu entries, target %llu pages\n", (unsigned long long)rr.pod_entries,
                   (unsigned long long)rr.pod_target);
        cli_print_domain(rr.d, stdout);
        printf("stream checksum (HV_CHECKSUM): %s\n", rr.checksum_verified ? "verified" : "none");
        printf("vCPU state: %s\n", vnote);
        if (resumed) {
            printf("resumed %u vCPU(s) after %llu writes made before the save: %llu accesses "
                   "(%llu writes) in %.3f s: %.2f M accesses/s\n",
                   gs->nr_vcpus, (unsigned long long)writes0, (unsigned long long)wr.accesses,
                   (unsigned long long)wr.writes, secs,
                   secs > 0 ? (double)wr.accesses / secs / 1e6 : 0);
            printf("TLB: hits %llu misses %llu (filled 4K %llu 2M %llu 1G %llu); EPT violations "
                   "%llu\n",
                   (unsigned long long)vs.tlb_hits, (unsigned long long)vs.tlb_misses,
                   (unsigned long long)vs.miss_4k, (unsigned long long)vs.miss_2m,
                   (unsigned long long)vs.miss_1g, (unsigned long long)vs.ept_violations);
            printf("after the run:   pages_1g %llu pages_2m %llu pages_4k %llu\n",
                   (unsigned long long)domain_pages_1g(rr.d),
                   (unsigned long long)domain_pages_2m(rr.d),
                   (unsigned long long)domain_pages_4k(rr.d));
        } else if (o.run && vstate != 1) {
            printf("--run: not resumed (no usable vCPU state in this stream)\n");
        }
        if (!o.no_audit)
            printf("audit: %s\n", audit ? hv_audit_last() : "ok (p2m, domain, frames)");
    }
    if (o.run && vstate != 1)
        fprintf(stderr, "hugevm: restore: --run: vCPU state not usable: %s\n", vnote);
    status = audit || run_rc < 0 || (o.run && vstate < 0) ? 1 : (o.run && vstate != 1) ? 2 : 0;
    for (unsigned i = 0; i < GUEST_STATE_MAX_VCPUS; i++) {
        workload_destroy(w[i]);
        vcpu_destroy(v[i]);
    }
out_dom:
    free(gs);
    domain_destroy(rr.d);
    restore_result_free(&rr);
out:
    close(fd);
    machine_destroy(m);
    return status;
}

static struct opt restore_opts_table[] = {
    {"host-mem", OPT_SIZE, &o.host_mem, "SIZE", "machine size (default: 2 x stream + 4G)", NULL},
    {"resident", OPT_FLAG, &o.resident, NULL, "commit the machine's memory up front, as a "
     "hypervisor's RAM (restore then copies at memory speed; see README)", NULL},
    {"ignore-layout", OPT_FLAG, &o.ignore_layout, NULL, "do not pre-allocate from the HV_LAYOUT record", NULL},
    {"backend", OPT_STR, &o.backend, "NAME", "with --run: soft (the stream's soft vCPUs), kvm or native (a program guest's saved vCPUs, on the backend it was saved from); auto (default) takes what the stream holds", NULL},
    {"run", OPT_FLAG, &o.run, NULL, "resume the saved workload on its soft vCPUs (exit 2 if the stream has no vCPU state, 1 if it is corrupt)", NULL},
    {"accesses", OPT_U64, &o.accesses, "N", "with --run: N guest accesses in total (default 10M)", NULL},
    {"seconds", OPT_SECONDS, &o.seconds, "S", "with --run: run for S seconds of wall time", NULL},
    {"no-audit", OPT_FLAG, &o.no_audit, NULL, "skip the p2m/domain/frame audits", NULL},
    {"json", OPT_FLAG, &o.json, NULL, "machine-readable output", NULL},
    {0},
};

const struct cmd cmd_restore = {
    .name = "restore",
    .summary = "restore a migration stream, superpages first, and show the allocation; --run resumes the saved workload",
    .usage_extra = "FILE",
    .run = run_restore,
    .opts = restore_opts_table,
};
