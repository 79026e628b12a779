/*
 * balloon_guest.c - `hugevm balloon --backend kvm|native`: the guest's own
 * balloon driver (guest/workloads.c) gives memory back and asks for it
 * again in 2M extents through memory calls with Xen's semantics, while its
 * workload runs on every vCPU.  The host only sets the target in vCPU 0's
 * parameter page and watches; with --fragment, other domains take part of
 * the free memory in 4K pieces before the deflate (with the guest paused:
 * the frame allocator serves one domain at a time), so that 2M
 * populate_physmap calls are refused and the guest has to fall back to 4K
 * pages by itself.  Both sides' counts are shown: the guest's
 * (guest_2m_failed, guest_fallback_4k_pages) and the host's
 * (host_2m_refused), which must agree, and the host's silent substitution
 * (increase_fallback_4k) stays 0 on this path.
 */
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "domain.h"
#include "frames.h"
#include "guest.h"
#include "shadow.h"
#include "machine.h"

/* Wait until the driver reached `pages` (or failed); nanoseconds or -1. */
static int64_t wait_balloon(struct guest *g, struct hvg_param *p, uint64_t pages,
                            uint64_t timeout_ns)
{
    uint64_t t0 = hv_now_ns();
    while (hv_now_ns() - t0 < timeout_ns) {
        if (__atomic_load_n(&p->balloon_current, __ATOMIC_ACQUIRE) == pages)
            return (int64_t)(hv_now_ns() - t0);
        if (p->balloon_error || g->fault_claimed)
            return -1;
        cli_sleep_ms(2);
    }
    return -1;
}

int cli_balloon_program(struct machine *m, struct domain *d, const struct cli_balloon_prog *a)
{
    struct guest_prog_config pc;
    struct guest *g = NULL;
    enum hvg_workload wl = HVG_WL_UNIFORM;
    char why[256] = "", b1[32], b2[32];
    int status = 1, rc;
    if (a->workload && guest_workload_parse(a->workload, &wl) < 0)
        return cli_error("balloon: unknown workload '%s' (seq, uniform, chase, zipf, writer)",
                         a->workload);
    uint64_t balloon = ((a->guest_mem - a->target) >> PAGE_SHIFT) & ~511ULL;
    guest_prog_config_default(&pc, wl);
    pc.nr_vcpus = a->vcpus;
    pc.seed = a->seed;
    pc.console_fd = a->json ? -1 : 1;
    pc.balloon_pages = balloon;
    pc.balloon_4k = pc.balloon_scrub = a->give_back_4k;
    pc.batch = 1024;
    if (wl == HVG_WL_WRITER)
        pc.write_rate = a->write_rate;
    rc = guest_create_prog(d, a->backend, &pc, &g, why, sizeof(why));
    if (rc < 0) {
        cli_error("balloon: cannot start the %s guest: %s", guest_backend_name(a->backend), why);
        goto out;
    }
    struct hvg_param *p = guest_gpa_ptr(g, HVG_PARAM_GPA(0));
    if ((rc = guest_start(g)) < 0) {
        cli_error("balloon: starting the vCPUs: %s", strerror(-rc));
        goto out;
    }
    uint64_t tot0 = d->tot_pages;
    uint64_t l4a = domain_pages_4k(d), l2a = domain_pages_2m(d), l1a = domain_pages_1g(d);
    __atomic_store_n(&p->balloon_target, balloon, __ATOMIC_RELEASE);
    int64_t t_in = wait_balloon(g, p, balloon, 120ULL * 1000 * 1000 * 1000);
    uint64_t tot_in = d->tot_pages;
    uint64_t l4b = domain_pages_4k(d), l2b = domain_pages_2m(d), l1b = domain_pages_1g(d);
    int64_t t_out = 0;
    uint64_t frag_ops = 0;
    if (t_in >= 0 && !a->no_deflate) {
        if (a->fragment > 0) {
            guest_pause(g);
            domid_t churner = ++m->next_domid;
            struct frame_stats st;
            frames_get_stats(m->frames, &st);
            double tgt = a->fragment * (double)st.free_frames / (double)st.nr_frames;
            if (frames_fragment(m->frames, churner, tgt, 0.7, a->seed, &frag_ops) < 0)
                cli_error("balloon: could not fragment the host (continuing)");
            guest_resume(g);
        }
        __atomic_store_n(&p->balloon_target, 0, __ATOMIC_RELEASE);
        t_out = wait_balloon(g, p, 0, 120ULL * 1000 * 1000 * 1000);
    }
    int frc = guest_finish(g, 60ULL * 1000 * 1000 * 1000);
    char verr[256] = "";
    int vrc = frc == 0 ? guest_verify(g, verr, sizeof(verr)) : -ECANCELED;
    int audit = 0;
    if (!a->no_audit) {
        audit = domain_audit(d);
        if (audit == 0)
            audit = frames_audit(m->frames);
    }
    bool ok = t_in >= 0 && (a->no_deflate || t_out >= 0) && frc == 0 && vrc == 0 && !audit &&
              p->balloon_2m_failed == d->stats.guest_2m_refused;
    if (a->json) {
        struct json j;
        json_init(&j, stdout);
        json_obj_begin(&j, NULL);
        json_str(&j, "backend", guest_backend_name(a->backend));
        json_str(&j, "backend_why", a->why);
        json_str(&j, "driver", "guest");
        json_u64(&j, "guest_bytes", a->guest_mem);
        json_u64(&j, "target_bytes", a->target);
        json_u64(&j, "balloon_pages", balloon);
        json_dbl(&j, "inflate_s", t_in >= 0 ? (double)t_in / 1e9 : -1);
        json_dbl(&j, "deflate_s", t_out >= 0 && !a->no_deflate ? (double)t_out / 1e9 : -1);
        json_u64(&j, "tot_pages_before", tot0);
        json_u64(&j, "tot_pages_inflated", tot_in);
        json_u64(&j, "tot_pages_after", d->tot_pages);
        json_u64(&j, "fragment_ops", frag_ops);
        json_u64(&j, "guest_2m_failed", p->balloon_2m_failed);
        json_u64(&j, "guest_fallback_4k_pages", p->balloon_fallback_4k);
        json_u64(&j, "guest_memory_calls", p->balloon_calls);
        json_i64(&j, "guest_balloon_error", p->balloon_error);
        json_u64(&j, "host_2m_refused", d->stats.guest_2m_refused);
        json_u64(&j, "host_increase_fallback_4k", d->stats.increase_fallback_4k);
        json_u64(&j, "decrease_zero_2m", d->pod.stats.decrease_zero_2m);
        bool pod = d->pod.target != 0;
        json_bool(&j, "pod_guest", pod);
        if (pod) {
            cli_json_pod(&j, "pod", d);
            cli_json_guest_pod(&j, "pod_faults", g);
        }
        json_u64(&j, "vcpus", a->vcpus);
        json_u64(&j, "accesses", guest_accesses(g));
        json_bool(&j, "verified", vrc == 0);
        if (vrc)
            json_str(&j, "verify_error", verr);
        if (g->fault.vcpu >= 0)
            json_str(&j, "error", g->fault.what);
        cli_json_domain(&j, "domain", d);
        json_str(&j, "audit", a->no_audit ? "skipped" : audit ? hv_audit_last() : "ok");
        json_obj_end(&j);
        json_finish(&j);
    } else {
        printf("backend: %s (%s); the guest's own balloon driver, %u vCPU(s) running %s\n",
               guest_backend_name(a->backend), a->why, a->vcpus, guest_workload_name(wl));
        if (t_in < 0)
            printf("inflate FAILED: the driver reached %s of %s (error %lld)%s%s\n",
                   hv_fmt_size(p->balloon_current << PAGE_SHIFT, b1, sizeof(b1)),
                   hv_fmt_size(balloon << PAGE_SHIFT, b2, sizeof(b2)),
                   (long long)p->balloon_error, g->fault.what[0] ? ": " : "", g->fault.what);
        else
            printf("guest %s: balloon of %s inflated in %.2f ms; leaves pages_1g %llu->%llu "
                   "pages_2m %llu->%llu pages_4k %llu->%llu\n",
                   hv_fmt_size(a->guest_mem, b1, sizeof(b1)),
                   hv_fmt_size(balloon << PAGE_SHIFT, b2, sizeof(b2)), (double)t_in / 1e6,
                   (unsigned long long)l1a, (unsigned long long)l1b, (unsigned long long)l2a,
                   (unsigned long long)l2b, (unsigned long long)l4a, (unsigned long long)l4b);
        if (frag_ops)
            printf("host fragmented before the deflate (%llu allocator ops)\n",
                   (unsigned long long)frag_ops);
        if (!a->no_deflate && t_in >= 0)
            printf("deflated %s in %.2f ms\n", t_out >= 0 ? "back" : "PARTLY (failed)",
                   t_out >= 0 ? (double)t_out / 1e6 : 0);
        printf("  the guest saw: %llu 2M extent(s) refused, %llu 4K pages populated instead, "
               "%llu memory calls\n", (unsigned long long)p->balloon_2m_failed,
               (unsigned long long)p->balloon_fallback_4k, (unsigned long long)p->balloon_calls);
        if (a->give_back_4k)
            printf("  the guest gave back 4K pages (each extent zeroed first): %llu zero 2M "
                   "superpage(s) reclaimed whole by decrease_reservation (seed 003)\n",
                   (unsigned long long)d->pod.stats.decrease_zero_2m);
        printf("  the host counted: %llu 2M extent(s) refused to the guest, %llu served as 4K "
               "behind its back (must be 0 on this path)\n",
               (unsigned long long)d->stats.guest_2m_refused,
               (unsigned long long)d->stats.increase_fallback_4k);
        if (d->pod.target) {
            cli_print_pod(d, stdout);
            cli_print_guest_pod(g, stdout);
        }
        printf("verified: %s%s%s\n", vrc == 0 ? "yes (the workload's memory, replayed)" : "no",
               vrc ? ": " : "", vrc ? verr : "");
        if (!a->no_audit)
            printf("audit: %s\n", audit ? hv_audit_last() : "ok (p2m, domain, frames)");
    }
    status = ok ? 0 : 1;
out:
    guest_destroy(g);
    return status;
}
