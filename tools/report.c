/*
 * report.c - how the commands show a domain, a machine's free memory and
 * the host THP setting, as human text and as JSON.  One place, so every
 * command prints the same names (KVM's pages_4k/pages_2m/pages_1g).
 */
#include "cli.h"
#include "guest.h"
#include "kvm.h"

#include <string.h>
#include <unistd.h>
#include "domain.h"
#include "save.h"

void cli_print_thp(const struct machine *m, FILE *out)
{
    fprintf(out, "host shmem THP: %s\n  %s\n", thp_shmem_name(m->thp),
            thp_shmem_explain(m->thp));
}

int cli_machine_create(const char *cmd, struct machine **m, uint64_t bytes, bool resident,
                       FILE *info)
{
    char b1[32];
    struct machine_opts o = {.bytes = bytes, .policy = FRAME_POLICY_FRAGPOOL,
                             .resident = resident};
    int rc = machine_create_opts(m, &o);
    if (rc < 0) {
        cli_error("%s: cannot create a %s%s machine: %s%s", cmd, hv_fmt_size(bytes, b1, sizeof(b1)),
                  resident ? " resident" : "", strerror(-rc),
                  resident && rc == -ENOMEM ? " (a resident machine must fit in the host's "
                                              "MemAvailable: give a smaller --host-mem)" : "");
        return rc;
    }
    if (resident && info) {
        double s = (double)(*m)->stats.prefault_ns / 1e9;
        fprintf(info, "machine: %s resident, committed in %.2f s (%.2f GB/s): restores and "
                "migrations write into memory that is already there\n",
                hv_fmt_size(bytes, b1, sizeof(b1)), s, s > 0 ? (double)bytes / 1e9 / s : 0);
    }
    return 0;
}

void cli_json_machine_memory(struct json *j, const struct machine *m)
{
    json_bool(j, "resident", m->resident);
    json_dbl(j, "prefault_s", (double)m->stats.prefault_ns / 1e9);
}

void cli_print_domain(const struct domain *d, FILE *out)
{
    char b1[32], b2[32];
    struct p2m_stats ps;
    p2m_get_stats(d->p2m, &ps);
    fprintf(out, "domain %u: tot_pages %llu (%s) of max %llu\n", d->domid,
            (unsigned long long)d->tot_pages,
            hv_fmt_size(d->tot_pages << PAGE_SHIFT, b1, sizeof(b1)),
            (unsigned long long)d->max_pages);
    fprintf(out, "  leaves:    pages_1g %-8llu pages_2m %-8llu pages_4k %llu\n",
            (unsigned long long)domain_pages_1g(d),
            (unsigned long long)domain_pages_2m(d),
            (unsigned long long)domain_pages_4k(d));
    fprintf(out, "  p2m:       %llu tables (%s), splits 2M %llu 1G %llu, merges 2M %llu 1G %llu\n",
            (unsigned long long)ps.tables,
            hv_fmt_size(p2m_table_bytes(d->p2m), b2, sizeof(b2)),
            (unsigned long long)ps.splits[1], (unsigned long long)ps.splits[2],
            (unsigned long long)ps.merges[1], (unsigned long long)ps.merges[2]);
    fprintf(out, "  statistics:\n");
#define X(name, desc)                                                          \
    if (d->stats.name)                                                         \
        fprintf(out, "    %-22s %10llu  %s\n", #name,                          \
                (unsigned long long)d->stats.name, desc);
    DOMAIN_STAT_FIELDS(X)
#undef X
    uint64_t nomem = d->stats.fallback_1g_nomem + d->stats.fallback_2m_nomem;
    if (nomem)
        fprintf(out, "  WARNING: %llu superpage request(s) fell back to a smaller "
                     "order because machine memory is fragmented\n",
                (unsigned long long)nomem);
}

void cli_json_domain(struct json *j, const char *key, const struct domain *d)
{
    struct p2m_stats ps;
    p2m_get_stats(d->p2m, &ps);
    json_obj_begin(j, key);
    json_u64(j, "domid", d->domid);
    json_u64(j, "tot_pages", d->tot_pages);
    json_u64(j, "max_pages", d->max_pages);
    json_u64(j, "pages_4k", domain_pages_4k(d));
    json_u64(j, "pages_2m", domain_pages_2m(d));
    json_u64(j, "pages_1g", domain_pages_1g(d));
    json_u64(j, "fallbacks", d->stats.fallback_1g_nomem + d->stats.fallback_2m_nomem);
    json_u64(j, "p2m_tables", ps.tables);
    json_u64(j, "p2m_table_bytes", p2m_table_bytes(d->p2m));
    json_u64(j, "splits_2m", ps.splits[1]);
    json_u64(j, "splits_1g", ps.splits[2]);
    json_u64(j, "merges_2m", ps.merges[1]);
    json_u64(j, "merges_1g", ps.merges[2]);
    json_obj_begin(j, "stats");
#define X(name, desc) json_u64(j, #name, d->stats.name);
    DOMAIN_STAT_FIELDS(X)
#undef X
    json_obj_end(j);
    json_obj_end(j);
}

void cli_print_frames(const struct machine *m, FILE *out)
{
    struct frame_stats st;
    char b1[32], b2[32];
    frames_get_stats(m->frames, &st);
    fprintf(out, "machine: %s, %s free, policy %s\n",
            hv_fmt_size(m->bytes, b1, sizeof(b1)),
            hv_fmt_size(st.free_frames << PAGE_SHIFT, b2, sizeof(b2)),
            frame_policy_name(frames_policy(m->frames)));
    fprintf(out, "  allocatable: 1G %llu, 2M %llu; fragment 2M blocks %llu\n",
            (unsigned long long)frames_allocatable(m->frames, PAGE_ORDER_1G),
            (unsigned long long)frames_allocatable(m->frames, PAGE_ORDER_2M),
            (unsigned long long)st.frag_blocks);
    fprintf(out, "  unusable index: 2M %.3f 1G %.3f; extfrag index: 2M %.3f 1G %.3f\n",
            frames_unusable_index(m->frames, PAGE_ORDER_2M),
            frames_unusable_index(m->frames, PAGE_ORDER_1G),
            frames_extfrag_index(m->frames, PAGE_ORDER_2M),
            frames_extfrag_index(m->frames, PAGE_ORDER_1G));
}

void cli_json_frames(struct json *j, const char *key, const struct machine *m)
{
    struct frame_stats st;
    frames_get_stats(m->frames, &st);
    json_obj_begin(j, key);
    json_str(j, "policy", frame_policy_name(frames_policy(m->frames)));
    json_u64(j, "bytes", m->bytes);
    json_u64(j, "free_frames", st.free_frames);
    json_u64(j, "allocatable_2m", frames_allocatable(m->frames, PAGE_ORDER_2M));
    json_u64(j, "allocatable_1g", frames_allocatable(m->frames, PAGE_ORDER_1G));
    json_u64(j, "frag_blocks", st.frag_blocks);
    json_dbl(j, "unusable_index_2m", frames_unusable_index(m->frames, PAGE_ORDER_2M));
    json_dbl(j, "unusable_index_1g", frames_unusable_index(m->frames, PAGE_ORDER_1G));
    json_dbl(j, "extfrag_index_2m", frames_extfrag_index(m->frames, PAGE_ORDER_2M));
    json_dbl(j, "extfrag_index_1g", frames_extfrag_index(m->frames, PAGE_ORDER_1G));
    json_arr_begin(j, "free_extents");
    for (unsigned o = 0; o < NR_ORDERS; o++)
        json_u64(j, NULL, st.free_extents[o]);
    json_arr_end(j);
    json_obj_end(j);
}

void cli_print_pod(const struct domain *d, FILE *out)
{
    const struct pod *p = &d->pod;
    fprintf(out, "PoD: cache %llu x 2M + %llu x 4K (%llu pages), %llu PoD pages outstanding, "
                 "target %llu pages\n",
            (unsigned long long)pod_cache_2m(p), (unsigned long long)pod_cache_4k(p),
            (unsigned long long)p->count, (unsigned long long)p->entry_count,
            (unsigned long long)p->target);
#define X(name, desc)                                                          \
    if (p->stats.name)                                                         \
        fprintf(out, "    %-24s %10llu  %s\n", #name,                          \
                (unsigned long long)p->stats.name, desc);
    POD_STAT_FIELDS(X)
#undef X
    if (d->crashed)
        fprintf(out, "  DOMAIN CRASHED: %s\n", domain_last_event(d));
}

void cli_json_pod(struct json *j, const char *key, const struct domain *d)
{
    const struct pod *p = &d->pod;
    json_obj_begin(j, key);
    json_u64(j, "cache_2m", pod_cache_2m(p));
    json_u64(j, "cache_4k", pod_cache_4k(p));
    json_u64(j, "count", p->count);
    json_u64(j, "entry_count", p->entry_count);
    json_u64(j, "target", p->target);
    json_bool(j, "crashed", d->crashed);
    json_str(j, "last_event", domain_last_event(d) ? domain_last_event(d) : "");
#define X(name, desc) json_u64(j, #name, p->stats.name);
    POD_STAT_FIELDS(X)
#undef X
    json_obj_end(j);
}

int cli_backend(const char *cmd, const char *arg, const char *soft_only, bool need_prog,
                int *backend, char *why, size_t len)
{
    enum guest_backend b;
    bool is_auto;
    if (guest_backend_parse(arg, &b, &is_auto) < 0)
        return cli_error("%s: --backend %s: give kvm, soft, native or auto", cmd, arg);
    if (!is_auto) {
        if (b != GUEST_BACKEND_SOFT && soft_only)
            return cli_error("%s: %s runs on the soft backend only so far (KVM guests do not "
                             "do that yet)", cmd, soft_only);
        if (b == GUEST_BACKEND_SOFT && need_prog)
            return cli_error("%s: a guest program needs the kvm or native backend", cmd);
        if (b == GUEST_BACKEND_KVM) {
            char r[200];
            if (kvm_probe(r, sizeof(r)) < 0)
                return cli_error("%s: --backend kvm: /dev/kvm cannot run guests here (%s); "
                                 "--backend soft or native run without it", cmd, r);
        }
        snprintf(why, len, "asked for with --backend %s", arg);
        *backend = (int)b;
        return 0;
    }
    char r[240];
    b = guest_backend_auto(r, sizeof(r));
    if (b == GUEST_BACKEND_KVM && soft_only) {
        snprintf(why, len, "auto: %s runs on soft vCPUs only so far", soft_only);
        b = GUEST_BACKEND_SOFT;
    } else if (b == GUEST_BACKEND_SOFT && need_prog) {
        snprintf(why, len, "auto: %s; a guest program runs natively instead",
                 r + strlen("soft: "));
        b = GUEST_BACKEND_NATIVE;
    } else {
        snprintf(why, len, "auto: %s", r);
    }
    *backend = (int)b;
    return 0;
}

/* ---- phases: the guest's speed and mappings before, during and after ---------- */

void cli_phase_begin(struct cli_phase *p, struct guest *g)
{
    memset(p, 0, sizeof(*p));
    p->t0 = hv_now_ns();
    p->a0 = guest_accesses(g);
}

void cli_phase_end(struct cli_phase *p, struct guest *g)
{
    uint64_t t = hv_now_ns(), a = guest_accesses(g);
    p->seconds = (double)(t - p->t0) / 1e9;
    p->accesses = a - p->a0;
    p->accesses_per_s = t > p->t0 ? (double)p->accesses * 1e9 / (double)(t - p->t0) : 0;
    p->have_kvm = guest_mmu_pages(g, p->kvm) == 0;
    uint64_t rss = 0, pmd = 0;
    p->have_host = guest_host_mapping(g, &rss, &pmd) == 0;
    p->pmd_share = rss ? (double)pmd / (double)rss : 0;
    p->valid = true;
}

void cli_json_phase(struct json *j, const char *key, const struct cli_phase *p)
{
    if (!p->valid) {
        json_null(j, key);
        return;
    }
    json_obj_begin(j, key);
    json_dbl(j, "seconds", p->seconds);
    json_u64(j, "accesses", p->accesses);
    json_dbl(j, "accesses_per_s", p->accesses_per_s);
    if (p->have_kvm) {
        json_u64(j, "kvm_pages_4k", p->kvm[0]);
        json_u64(j, "kvm_pages_2m", p->kvm[1]);
        json_u64(j, "kvm_pages_1g", p->kvm[2]);
    } else {
        json_null(j, "kvm_pages_4k");
        json_null(j, "kvm_pages_2m");
        json_null(j, "kvm_pages_1g");
    }
    if (p->have_host)
        json_dbl(j, "host_pmd_mapped_share", p->pmd_share);
    else
        json_null(j, "host_pmd_mapped_share");
    json_obj_end(j);
}

void cli_print_phase(const char *what, const struct cli_phase *p)
{
    if (!p->valid)
        return;
    printf("  %-22s %8.2f M accesses/s over %.2f s", what, p->accesses_per_s / 1e6, p->seconds);
    if (p->have_kvm)
        printf("; KVM pages_4k %llu pages_2m %llu pages_1g %llu", (unsigned long long)p->kvm[0],
               (unsigned long long)p->kvm[1], (unsigned long long)p->kvm[2]);
    if (p->have_host)
        printf("; host 2M share %.0f%%", p->pmd_share * 100);
    printf("\n");
}

/* ---- a program guest's PoD fault server ---------------------------------------- */

void cli_print_guest_pod(const struct guest *g, FILE *out)
{
    fprintf(out, "  PoD fault server (the guest's touches of PoD memory):\n");
#define X(name, desc)                                                          \
    fprintf(out, "    %-22s %12llu  %s\n", #name, (unsigned long long)g->pod.name, desc);
    GUEST_POD_FIELDS(X)
#undef X
}

void cli_json_guest_pod(struct json *j, const char *key, const struct guest *g)
{
    json_obj_begin(j, key);
#define X(name, desc) json_u64(j, #name, g->pod.name);
    GUEST_POD_FIELDS(X)
#undef X
    json_obj_end(j);
}

/* A one-line progress bar on stderr, only when stderr is a terminal. */
void cli_progress(const char *what, uint64_t done, uint64_t total)
{
    static int last = -1;
    if (!isatty(STDERR_FILENO))
        return;
    int pct = total ? (int)(done * 100 / total) : 0;
    if (pct == last && done != total)
        return;
    last = pct;
    int bars = pct / 4;
    fprintf(stderr, "\r%-8s [%.*s%*s] %3d%%", what, bars, "#########################",
            25 - bars, "", pct);
    if (done >= total) {
        fputc('\n', stderr);
        last = -1;
    }
    fflush(stderr);
}

void cli_save_progress(void *ctx, uint64_t done, uint64_t total)
{
    (void)ctx;
    if (total >= (256 * MiB) >> PAGE_SHIFT)
        cli_progress("save", done, total);
}

uint64_t cli_restore_host_mem(uint64_t bytes)
{
    return ((bytes * 2 + 4 * GiB) + GiB - 1) & ~(GiB - 1);
}

void cli_restore_progress(void *ctx, uint64_t bytes_read)
{
    uint64_t total = ctx ? *(const uint64_t *)ctx : 0;
    if (total >= 256 * MiB)
        cli_progress("restore", bytes_read, total);
}

/* The one line of a stream written or read. */
static void print_stream(FILE *out, uint64_t bytes, uint64_t records, uint64_t page_records,
                         uint64_t data, uint64_t zero, uint64_t holes, const char *broken,
                         double seconds)
{
    char b1[32];
    fprintf(out, "stream: %s in %llu records (%llu PAGE_DATA): %llu pages with data, %llu zero "
            "(XALLOC), %llu holes (XTAB)%s; %.1f ms, %.2f GiB/s of guest RAM\n",
            hv_fmt_size(bytes, b1, sizeof(b1)), (unsigned long long)records,
            (unsigned long long)page_records, (unsigned long long)data,
            (unsigned long long)zero, (unsigned long long)holes, broken, seconds * 1e3,
            seconds > 0 ? (double)((data + zero) << PAGE_SHIFT) / GiB / seconds : 0.0);
}

void cli_print_saved(FILE *out, const struct save_result *r)
{
    print_stream(out, r->bytes, r->records, r->page_data_records, r->pages_data, r->pages_zero,
                 r->pages_xtab, "", r->seconds);
}

void cli_print_restored(FILE *out, const struct restore_result *r)
{
    char broken[48];
    snprintf(broken, sizeof(broken), ", %llu broken", (unsigned long long)r->pages_broken);
    print_stream(out, r->bytes, r->records, r->page_data_records, r->pages_data,
                 r->pages_xalloc, r->pages_xtab, broken, r->seconds);
}
