/*
 * run_guest.c - `hugevm run` on a program backend (kvm, native): the
 * built-in C workloads (or a user's --guest-program) on real vCPU threads
 * over the domain cmd_run.c built.  Every vCPU first reads each page of its
 * slice once (HVG_F_TOUCH; timed on its own: first touches and KVM's
 * faults), then runs the workload for --seconds or --accesses.  Reports
 * the backend and why it was chosen, the guest's own speed (its published
 * counts, read without an exit every 10 ms, after the first tenth of the
 * run), KVM's own counts of its 4K/2M/1G
 * mappings, the share of guest memory the host maps with 2M pages, and the
 * host's replay of every vCPU (verified: true when every word and checksum
 * matched).
 */
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cli.h"
#include "domain.h"
#include "guest.h"
#include "shadow.h"
#include "save.h"

#define PROGRAM_MAX (16 * MiB)

static int read_program(const char *path, void **buf, size_t *len)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return cli_error("run: --guest-program %s: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode) || st.st_size <= 0 ||
        (uint64_t)st.st_size > PROGRAM_MAX) {
        close(fd);
        return cli_error("run: --guest-program %s: not a regular file of 1 byte to 16 MiB", path);
    }
    *len = (size_t)st.st_size;
    *buf = malloc(*len);
    size_t got = 0;
    while (*buf && got < *len) {
        ssize_t r = read(fd, (char *)*buf + got, *len - got);
        if (r <= 0)
            break;
        got += (size_t)r;
    }
    close(fd);
    if (!*buf || got != *len) {
        free(*buf);
        *buf = NULL;
        return cli_error("run: --guest-program %s: read %zu of %zu bytes", path, got, *len);
    }
    return 0;
}

static int guest_page_order_of(const char *s, unsigned *order)
{
    if (!strcasecmp(s, "2m"))
        *order = PAGE_ORDER_2M;
    else if (!strcasecmp(s, "1g"))
        *order = PAGE_ORDER_1G;
    else if (!strcasecmp(s, "auto"))
        *order = 0;
    else
        return -EINVAL;
    return 0;
}

int cli_run_program(struct domain *d, const struct cli_prog_run *a)
{
    struct guest_prog_config pc;
    struct guest *g = NULL;
    void *prog = NULL;
    char why[256] = "", b1[32];
    int status = 1, rc;
    enum hvg_workload wl = HVG_WL_UNIFORM;

    if (!a->program_path && guest_workload_parse(a->workload, &wl) < 0)
        return cli_error("run: unknown workload '%s' (seq, uniform, chase, zipf, writer)",
                         a->workload);
    guest_prog_config_default(&pc, wl);
    pc.nr_vcpus = a->vcpus;
    pc.seed = a->seed;
    if (a->write_frac >= 0) {
        if (a->write_frac > 1)
            return cli_error("run: --write-frac must be in [0, 1]");
        pc.write_ppm = (uint32_t)(a->write_frac * 1e6 + 0.5);
        pc.write_ppm_set = true;
    }
    if (a->wss < 0 || a->wss > 1)
        return cli_error("run: --wss must be in [0, 1]");
    pc.wss_ppm = (uint32_t)(a->wss * 1e6 + 0.5);
    pc.write_rate = a->write_rate;
    pc.zipf_theta = a->theta;
    pc.console_fd = a->json ? -1 : 1;
    /* the speed reported is the workload's, not first touches'; a PoD
     * guest's first pass would populate all of it, past its target */
    pc.touch_first = d->pod.target == 0;
    if (a->backend == GUEST_BACKEND_KVM &&
        guest_page_order_of(a->guest_page, &pc.guest_page_order) < 0)
        return cli_error("run: --guest-page %s: the kvm backend's guest page tables use 2M, 1G "
                         "or auto (the largest KVM offers)", a->guest_page);
    /* a guest that migrates runs until it is stopped (on the receiver) */
    uint64_t ops = a->accesses && !a->migrate_to ? (a->accesses + a->vcpus - 1) / a->vcpus : 0;
    pc.ops = ops;
    if (a->program_path) {
        if (read_program(a->program_path, &prog, &pc.program_len))
            return 1;
        pc.program = prog;
    }

    if (a->resume)
        rc = guest_create_prog_resume(d, a->resume, &g, why, sizeof(why));
    else
        rc = guest_create_prog(d, a->backend, &pc, &g, why, sizeof(why));
    if (rc < 0) {
        cli_error("%s: cannot %s the %s guest: %s", a->resume ? "restore" : "run",
                  a->resume ? "resume" : "start", guest_backend_name(a->backend), why);
        goto out;
    }
    if (a->resume) {
        wl = (enum hvg_workload)g->tmpl->workload;
        ops = 0; /* the saved guest runs to its own end, or for --seconds */
    }
    if (!a->json)
        printf("backend: %s (%s); %u vCPU(s), %s, guest page tables %s\n",
               guest_backend_name(a->backend), a->why, a->vcpus,
               a->program_path ? a->program_path : guest_workload_name(wl),
               guest_page_order(g) == PAGE_ORDER_1G   ? "1G"
               : guest_page_order(g) == PAGE_ORDER_2M ? "2M"
                                                      : "the host's (native)");
    uint64_t resumed_acc = a->resume ? guest_accesses(g) : 0;
    int64_t prefault_ns = 0;
    if (a->resume) {
        /* a restored guest's memory is new to this host: map every page of
         * it before it runs (its first pass over memory was before the
         * save), so its speed is its own, not the host's first touches */
        prefault_ns = guest_prefault(g);
        if (!a->json && prefault_ns > 0)
            printf("host mappings of the guest's memory made before it ran: %.3f s\n",
                   (double)prefault_ns / 1e9);
    }
    uint64_t t0 = hv_now_ns();
    if ((rc = guest_start(g)) < 0) {
        cli_error("run: starting the vCPUs: %s", strerror(-rc));
        goto out;
    }
    /* First pass: every vCPU reads each page of its slice once (and chase
     * writes its cycle); timed on its own. */
    while (!guest_running_phase(g) && __atomic_load_n(&g->running, __ATOMIC_ACQUIRE) &&
           !g->fault_claimed)
        cli_sleep_ms(5);
    uint64_t t_run = hv_now_ns();
    double touch_s = (double)(t_run - t0) / 1e9;
    if (!a->json && !g->fault_claimed && !a->resume)
        printf("first pass over the guest's memory (set-up, first touches): %.3f s\n", touch_s);
    if (!a->json && a->resume)
        printf("resumed after %llu accesses made before the save\n",
               (unsigned long long)resumed_acc);
    if (a->migrate_to && !g->fault_claimed) {
        status = cli_migrate_guest(g, a->program_path ? a->program_path : guest_workload_name(wl),
                                   a->migrate_to, a->after, a->mopts, a->tls, a->retries,
                                   a->doubt_file, a->seconds, a->fail_save, a->json);
        if (status == 1 && !a->fail_save) {
            /* the migration failed and the guest ran on here: it finishes,
             * and the host's replay says whether anything was lost */
            guest_resume(g);
            char verr[256] = "";
            rc = guest_finish(g, 60ULL * 1000 * 1000 * 1000);
            int vrc = rc == 0 ? guest_verify(g, verr, sizeof(verr)) : rc;
            if (!a->json)
                printf("the guest kept here after the failed migration: verified %s%s%s\n",
                       vrc == 0 ? "yes" : "no", vrc ? ": " : "",
                       vrc == 0 ? "" : verr[0] ? verr : strerror(-vrc));
        }
        goto out;
    }
    /* Then the workload: sampled every 10 ms from the published counts; the
     * rate is taken after a tenth of the run (warm-up). */
    uint64_t limit_ns = a->seconds > 0 ? (uint64_t)(a->seconds * 1e9) : 0;
    uint64_t total_ops = ops * a->vcpus;
    uint64_t warm_t = 0, warm_acc = 0, end_t = 0, end_acc = 0;
    for (;;) {
        uint64_t now = hv_now_ns() - t_run, acc = guest_accesses(g), done = 0;
        for (unsigned i = 0; i < a->vcpus; i++) {
            struct hvg_wl_state st;
            if (guest_vcpu_state(g, i, &st) == 0)
                done += st.ops;
        }
        bool warm = limit_ns ? now >= limit_ns / 10 : done * 10 >= total_ops;
        if (warm && !warm_t) {
            warm_t = now;
            warm_acc = acc;
        }
        end_t = now;
        end_acc = acc;
        if (__atomic_load_n(&g->running, __ATOMIC_ACQUIRE) == 0 || g->fault_claimed)
            break;
        if (limit_ns && now >= limit_ns)
            break;
        cli_sleep_ms(10);
    }
    /* --save: the guest as it is now, paused, with its vCPUs' state; then
     * it runs on to its end here (the file holds the state at the pause) */
    struct save_result sr = {0};
    char serr[256] = "";
    int save_rc = 0;
    if (a->save && !g->fault_claimed) {
        guest_pause(g);
        struct hvctx_buf tl;
        save_rc = hvctx_begin(&tl);
        if (save_rc == 0)
            save_rc = guest_prog_encode(g, &tl);
        if (save_rc == 0)
            save_rc = cli_save_tlvs(d, tl.p + sizeof(struct hvctx_header),
                                    tl.len - sizeof(struct hvctx_header), a->save, &sr, serr,
                                    sizeof(serr));
        else
            snprintf(serr, sizeof(serr), "capturing the vCPUs: %s", strerror(-save_rc));
        hvctx_free(&tl);
        guest_resume(g);
        if (save_rc < 0)
            cli_error("run: saving to %s: %s", a->save, serr);
    }
    uint64_t mmu[3] = {0};
    bool have_mmu = guest_mmu_pages(g, mmu) == 0;
    uint64_t rss = 0, pmd = 0;
    bool have_map = guest_host_mapping(g, &rss, &pmd) == 0;
    rc = limit_ns ? guest_finish(g, 30ULL * 1000 * 1000 * 1000)
                  : guest_wait(g, 0);
    double secs = (double)(hv_now_ns() - t0) / 1e9;
    double rate = end_t > warm_t ? (double)(end_acc - warm_acc) * 1e9 / (double)(end_t - warm_t)
                                 : 0;
    uint64_t accesses = guest_accesses(g);
    char verr[256] = "";
    int vrc = rc == 0 ? guest_verify(g, verr, sizeof(verr)) : -ECANCELED;
    if (rc != 0)
        snprintf(verr, sizeof(verr), "the guest did not finish");
    int audit = 0;
    if (!a->no_audit) {
        audit = domain_audit(d);
        if (audit == 0)
            audit = frames_audit(d->m->frames);
    }
    double pmd_share = rss ? (double)pmd / (double)rss : 0;
    if (a->json) {
        struct json j;
        json_init(&j, stdout);
        json_obj_begin(&j, NULL);
        json_str(&j, "backend", guest_backend_name(a->backend));
        json_str(&j, "backend_why", a->why);
        json_u64(&j, "guest_bytes", a->guest_mem);
        json_str(&j, "workload", a->program_path ? "custom" : guest_workload_name(wl));
        if (a->program_path)
            json_str(&j, "guest_program", a->program_path);
        json_u64(&j, "vcpus", a->vcpus);
        json_u64(&j, "seed", a->seed);
        json_u64(&j, "guest_page_order", guest_page_order(g));
        json_u64(&j, "accesses", accesses);
        if (a->resume) {
            json_u64(&j, "accesses_before_save", resumed_acc);
            json_dbl(&j, "prefault_s", prefault_ns > 0 ? (double)prefault_ns / 1e9 : 0);
        }
        json_dbl(&j, "seconds", secs);
        json_dbl(&j, "first_pass_s", touch_s);
        json_dbl(&j, "accesses_per_s", rate);
        json_bool(&j, "verified", vrc == 0);
        if (vrc != 0)
            json_str(&j, "verify_error", verr);
        if (have_mmu) {
            json_u64(&j, "kvm_pages_4k", mmu[0]);
            json_u64(&j, "kvm_pages_2m", mmu[1]);
            json_u64(&j, "kvm_pages_1g", mmu[2]);
        } else {
            json_null(&j, "kvm_pages_4k");
            json_null(&j, "kvm_pages_2m");
            json_null(&j, "kvm_pages_1g");
        }
        json_u64(&j, "host_rss_bytes", rss);
        json_u64(&j, "host_pmd_mapped_bytes", pmd);
        json_dbl(&j, "host_pmd_mapped_share", pmd_share);
        /* the phases of issue 11: this run is the guest "before" (a run
         * that may be saved or migrated) or "after" (a restored guest) */
        struct cli_phase ph = {
            .valid = true, .have_kvm = have_mmu, .have_host = have_map,
            .accesses = end_acc - warm_acc, .seconds = (double)(end_t - warm_t) / 1e9,
            .accesses_per_s = rate, .pmd_share = pmd_share,
            .kvm = {mmu[0], mmu[1], mmu[2]},
        };
        struct cli_phase none = {0};
        json_obj_begin(&j, "phases");
        cli_json_phase(&j, "before", a->resume ? &none : &ph);
        cli_json_phase(&j, "during", &none);
        cli_json_phase(&j, "after", a->resume ? &ph : &none);
        json_obj_end(&j);
        json_obj_begin(&j, "guest_stats");
#define X(name, desc) json_u64(&j, #name, g->st.name);
        GUEST_STAT_FIELDS(X)
#undef X
        json_obj_end(&j);
        if (g->fault.vcpu >= 0 || rc < 0)
            json_str(&j, "error", g->fault.what[0] ? g->fault.what : strerror(-rc));
        json_str(&j, "console", g->console);
        if (a->save) {
            json_obj_begin(&j, "save");
            json_str(&j, "file", a->save);
            json_bool(&j, "saved", save_rc == 0);
            if (save_rc < 0)
                json_str(&j, "error", serr);
            json_u64(&j, "bytes", sr.bytes);
            json_u64(&j, "pages_data", sr.pages_data);
            json_obj_end(&j);
        }
        cli_json_domain(&j, "domain", d);
        if (d->pod.target) {
            cli_json_pod(&j, "pod", d);
            cli_json_guest_pod(&j, "pod_faults", g);
        }
        json_str(&j, "audit", a->no_audit ? "skipped" : audit ? hv_audit_last() : "ok");
        json_obj_end(&j);
        json_finish(&j);
    } else {
        if (rc < 0)
            printf("the guest failed: %s\n", g->fault.what[0] ? g->fault.what : strerror(-rc));
        printf("%llu accesses in %.3f s; after warm-up %.2f M accesses/s\n",
               (unsigned long long)accesses, secs, rate / 1e6);
        printf("verified: %s%s%s\n", vrc == 0 ? "yes (every vCPU replayed on the host: every "
                                                "word and checksum match)" : "no",
               vrc ? ": " : "", vrc ? verr : "");
        if (have_mmu)
            printf("KVM mappings: pages_4k %llu pages_2m %llu pages_1g %llu\n",
                   (unsigned long long)mmu[0], (unsigned long long)mmu[1],
                   (unsigned long long)mmu[2]);
        if (have_map)
            printf("host: %s resident, %.0f%% of it mapped with 2M pages%s\n",
                   hv_fmt_size(rss, b1, sizeof(b1)), pmd_share * 100,
                   pmd_share < 0.5 ? " (shmem THP: see `hugevm info`)" : "");
        if (a->save && save_rc == 0) {
            printf("saved to %s (paused at the end of the timed run, vCPU state included)\n",
                   a->save);
            cli_print_saved(stdout, &sr);
            printf("  resume with: hugevm restore %s --run --backend %s\n", a->save,
                   guest_backend_name(a->backend));
        }
        cli_print_domain(d, stdout);
        if (d->pod.target) {
            cli_print_pod(d, stdout);
            cli_print_guest_pod(g, stdout);
        }
        if (!a->no_audit)
            printf("audit: %s\n", audit ? hv_audit_last() : "ok (p2m, domain, frames)");
    }
    status = rc < 0 || audit || save_rc < 0 || (vrc != 0 && !a->program_path && vrc != -E2BIG)
                 ? 1
                 : 0;
out:
    guest_destroy(g);
    free(prog);
    return status;
}
