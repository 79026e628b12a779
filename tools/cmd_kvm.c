/*
 * cmd_kvm.c - `hugevm kvm`: the kvm vCPU backend end to end.  Populate a
 * guest, mirror its p2m into host mappings and KVM memslots, run the real
 * writer program under /dev/kvm over the largest RAM run, and check it:
 * every word the program wrote (replayed on the host) and its checksum;
 * with --log-dirty, that KVM's dirty log names exactly the written pages.
 * Reports the exit, writes/s, memslots, how much of the mirror the host
 * maps with PMD (2M) pages and what the shmem THP setting implies.
 */
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "domain.h"
#include "kvm.h"

/* The host replay keeps 16 bytes per write. */
#define MAX_WRITES (1ULL << 26)

static struct {
    uint64_t guest_mem, host_mem, writes, seed;
    bool log_dirty, json, no_audit;
} o = {
    .guest_mem = 256 * MiB,
    .writes = 1000000,
    .seed = 1,
};

/* The model's writes, packed: key = (gpa / 8) << 26 | sequence, value. */
struct replay {
    uint64_t (*v)[2];
    uint64_t n;
    uint64_t *pages; /* bitmap over gfns: written */
};

static void replay_add(void *ctx, uint64_t gpa, uint64_t val)
{
    struct replay *r = ctx;
    r->v[r->n][0] = (gpa >> 3) << 26 | r->n;
    r->v[r->n][1] = val;
    r->n++;
    gfn_t gfn = gpa >> PAGE_SHIFT;
    r->pages[gfn / 64] |= 1ULL << (gfn % 64);
}

static int by_key(const void *a, const void *b)
{
    const uint64_t *x = a, *y = b;
    return x[0] < y[0] ? -1 : x[0] > y[0];
}

/* Words whose last write the guest's memory does not hold (checked through
 * the p2m and the machine, not through the mirror). */
static uint64_t verify_words(const struct domain *d, struct replay *r, uint64_t *checked)
{
    uint64_t bad = 0;
    qsort(r->v, r->n, sizeof(*r->v), by_key);
    *checked = 0;
    for (uint64_t i = 0; i < r->n; i++) {
        uint64_t word = r->v[i][0] >> 26;
        if (i + 1 < r->n && r->v[i + 1][0] >> 26 == word)
            continue; /* overwritten later */
        uint64_t gpa = word << 3, v;
        enum p2m_type t;
        mfn_t mfn = p2m_get_entry(d->p2m, gpa >> PAGE_SHIFT, &t, NULL);
        (*checked)++;
        if (!p2m_is_ram(t)) {
            bad++;
            continue;
        }
        memcpy(&v, (const uint8_t *)machine_ptr(d->m, mfn) + (gpa & (PAGE_SIZE - 1)), 8);
        bad += v != r->v[i][1];
    }
    return bad;
}

/* The largest memslot, without the guest's boot pages. */
static void pick_range(const struct kvm_vm *vm, const struct kvm_mirror_info *mi,
                       gfn_t *gfn, uint64_t *pages)
{
    struct kvm_slot_info s[64];
    unsigned n = kvm_get_slots(vm, s, 64);
    gfn_t boot_end = KVM_BOOT_GFN + mi->boot_pages;
    *gfn = 0;
    *pages = 0;
    for (unsigned i = 0; i < n && i < 64; i++) {
        gfn_t lo = s[i].gfn, hi = s[i].gfn + s[i].pages;
        if (lo < boot_end && hi > KVM_BOOT_GFN)
            lo = boot_end;
        if (hi > lo && hi - lo > *pages) {
            *gfn = lo;
            *pages = hi - lo;
        }
    }
}

static int run_kvm(int argc, char **argv)
{
    struct machine *m = NULL;
    struct domain *d = NULL;
    struct kvm_vm *vm = NULL;
    struct replay rp = {0};
    uint64_t *dirty_bm = NULL;
    char why[256] = "", b1[32], b2[32], b3[32];
    int rc, status = 1;

    if (argc)
        return cli_error("kvm: unexpected argument '%s'", argv[0]);
    if (o.guest_mem < 4 * MiB || o.guest_mem % (2 * MiB))
        return cli_error("kvm: --guest-mem must be a multiple of 2 MiB, at least 4 MiB");
    if (o.writes > MAX_WRITES)
        return cli_error("kvm: --writes at most %llu (the host replay keeps 16 bytes a write)",
                         (unsigned long long)MAX_WRITES);
    if (kvm_probe(why, sizeof(why)) < 0)
        return cli_error("kvm: /dev/kvm cannot run guests here: %s", why);
    if (!o.host_mem)
        o.host_mem = (o.guest_mem + o.guest_mem / 4 + 64 * MiB + GiB - 1) & ~(GiB - 1);
    if (cli_machine_create("kvm", &m, o.host_mem, false, NULL) < 0)
        return 1;
    struct domain_config cfg;
    domain_config_default(&cfg);
    if ((rc = domain_create(m, &cfg, &d)) < 0) {
        cli_error("kvm: cannot create the domain: %s", strerror(-rc));
        goto out;
    }
    if ((rc = domain_populate_guest(d, o.guest_mem, NULL)) < 0) {
        cli_error("kvm: populating %s failed: %s", hv_fmt_size(o.guest_mem, b1, sizeof(b1)),
                  strerror(-rc));
        goto out;
    }
    uint64_t t0 = hv_now_ns();
    if ((rc = kvm_vm_create(d, NULL, &vm, why, sizeof(why))) < 0) {
        cli_error("kvm: cannot mirror the guest into a KVM VM: %s (%s)", why, strerror(-rc));
        goto out;
    }
    double mirror_s = (double)(hv_now_ns() - t0) / 1e9;
    struct kvm_mirror_info mi;
    kvm_mirror_get_info(vm, &mi);
    if (o.log_dirty && (rc = kvm_set_log_dirty(vm, true)) < 0) {
        cli_error("kvm: enabling KVM dirty logging failed: %s", strerror(-rc));
        goto out;
    }

    struct kvm_writer w = {.seed = o.seed, .writes = o.writes};
    pick_range(vm, &mi, &w.gfn, &w.pages);
    rp.v = malloc((size_t)(o.writes ? o.writes : 1) * sizeof(*rp.v));
    rp.pages = calloc((size_t)((mi.max_gfn + 63) / 64), sizeof(*rp.pages));
    dirty_bm = calloc((size_t)((mi.max_gfn + 63) / 64), sizeof(*dirty_bm));
    if (!rp.v || !rp.pages || !dirty_bm) {
        cli_error("kvm: out of memory for the host replay of %llu writes",
                  (unsigned long long)o.writes);
        goto out;
    }
    struct kvm_guest_result res;
    if ((rc = kvm_run_writer(vm, &w, &res)) < 0) {
        cli_error("kvm: running the guest failed: %s", strerror(-rc));
        goto out;
    }
    uint64_t model_sum = kvm_writer_model(&w, replay_add, &rp);
    uint64_t checked = 0, bad = verify_words(d, &rp, &checked);
    uint64_t model_pages = 0, dirty_pages = 0, dirty_diff = 0;
    for (uint64_t i = 0; i < (mi.max_gfn + 63) / 64; i++)
        model_pages += (uint64_t)__builtin_popcountll(rp.pages[i]);
    if (o.log_dirty) {
        if ((rc = kvm_harvest(vm, dirty_bm, mi.max_gfn, &dirty_pages)) < 0) {
            cli_error("kvm: harvesting the dirty log failed: %s", strerror(-rc));
            goto out;
        }
        for (uint64_t i = 0; i < (mi.max_gfn + 63) / 64; i++)
            dirty_diff += (uint64_t)__builtin_popcountll(dirty_bm[i] ^ rp.pages[i]);
    }
    bool done = res.exit == KVM_GUEST_DONE && res.writes_done == w.writes;
    bool sum_ok = done && res.checksum == model_sum;
    double secs = (double)res.ns / 1e9;
    double wps = secs > 0 ? (double)res.writes_done / secs : 0;
    struct kvm_host_mapping hm = {0};
    bool hm_ok = kvm_host_mapping_measure(vm, &hm) == 0;
    uint64_t kp[3] = {0};
    bool kp_ok = kvm_mmu_pages(vm, kp) == 0;
    struct kvm_vm_stats st;
    kvm_get_stats(vm, &st);
    int audit = 0;
    if (!o.no_audit && (audit = domain_audit(d)) == 0)
        audit = frames_audit(m->frames);
    double pmd_frac = hm.rss_bytes ? (double)hm.pmd_mapped_bytes / (double)hm.rss_bytes : 0;
    const char *guest_page = mi.guest_order == PAGE_ORDER_1G ? "1G" : "2M";

    if (o.json) {
        struct json j;
        json_init(&j, stdout);
        json_obj_begin(&j, NULL);
        json_str(&j, "thp_shmem", thp_shmem_name(m->thp));
        json_bool(&j, "thp_shmem_usable", thp_shmem_usable(m->thp));
        json_str(&j, "thp_explain", thp_shmem_explain(m->thp));
        json_u64(&j, "guest_bytes", o.guest_mem);
        json_u64(&j, "host_bytes", o.host_mem);
        cli_json_domain(&j, "domain", d);
        json_obj_begin(&j, "mirror");
        json_u64(&j, "max_gfn", mi.max_gfn);
        json_u64(&j, "mapped_pages", mi.mapped_pages);
        json_u64(&j, "leaves_4k", mi.leaves[0]);
        json_u64(&j, "leaves_2m", mi.leaves[1]);
        json_u64(&j, "leaves_1g", mi.leaves[2]);
        json_u64(&j, "host_mappings", mi.runs);
        json_u64(&j, "memslots", mi.slots);
        json_u64(&j, "max_memslots", mi.max_slots);
        json_bool(&j, "clear_dirty_log", mi.manual_protect);
        json_bool(&j, "dirty_ring_offered", mi.dirty_ring);
        json_str(&j, "guest_page", guest_page);
        json_dbl(&j, "seconds", mirror_s);
        json_obj_end(&j);
        json_obj_begin(&j, "writer");
        json_u64(&j, "seed", w.seed);
        json_u64(&j, "gfn", w.gfn);
        json_u64(&j, "pages", w.pages);
        json_u64(&j, "writes", w.writes);
        json_obj_end(&j);
        json_obj_begin(&j, "exit");
        json_str(&j, "reason", kvm_guest_exit_name(res.exit));
        json_u64(&j, "kvm_exit_reason", res.kvm_exit_reason);
        json_u64(&j, "detail", res.detail);
        json_u64(&j, "writes_done", res.writes_done);
        json_dbl(&j, "seconds", secs);
        json_dbl(&j, "writes_per_s", wps);
        json_u64(&j, "checksum", res.checksum);
        json_u64(&j, "model_checksum", model_sum);
        json_bool(&j, "checksum_match", sum_ok);
        json_obj_end(&j);
        json_obj_begin(&j, "verify");
        json_u64(&j, "words_checked", checked);
        json_u64(&j, "mismatches", bad);
        json_u64(&j, "pages_written", model_pages);
        json_bool(&j, "ok", done && sum_ok && bad == 0);
        json_obj_end(&j);
        json_obj_begin(&j, "dirty_log");
        json_bool(&j, "enabled", o.log_dirty);
        json_u64(&j, "pages_harvested", dirty_pages);
        json_u64(&j, "pages_differing_from_model", dirty_diff);
        json_bool(&j, "matches_model", o.log_dirty && dirty_diff == 0);
        json_obj_end(&j);
        json_obj_begin(&j, "host_mapping");
        json_bool(&j, "measured", hm_ok);
        json_u64(&j, "vmas", hm.vmas);
        json_u64(&j, "rss_bytes", hm.rss_bytes);
        json_u64(&j, "pmd_mapped_bytes", hm.pmd_mapped_bytes);
        json_dbl(&j, "pmd_fraction", pmd_frac);
        json_obj_end(&j);
        json_obj_begin(&j, "kvm_mmu");
        json_bool(&j, "reported", kp_ok);
        json_u64(&j, "pages_4k", kp[0]);
        json_u64(&j, "pages_2m", kp[1]);
        json_u64(&j, "pages_1g", kp[2]);
        json_obj_end(&j);
        json_obj_begin(&j, "stats");
#define X(name, desc) json_u64(&j, #name, st.name);
        KVM_STAT_FIELDS(X)
#undef X
        json_obj_end(&j);
        json_str(&j, "audit", o.no_audit ? "skipped" : audit ? hv_audit_last() : "ok");
        json_obj_end(&j);
        json_finish(&j);
    } else {
        cli_print_thp(m, stdout);
        cli_print_domain(d, stdout);
        printf("mirror: %s of RAM in %llu host mappings over %s of guest-physical space "
               "(%.1f ms); leaves 4K %llu, 2M %llu, 1G %llu\n",
               hv_fmt_size(mi.mapped_pages << PAGE_SHIFT, b1, sizeof(b1)),
               (unsigned long long)mi.runs, hv_fmt_size(mi.max_gfn << PAGE_SHIFT, b2, sizeof(b2)),
               mirror_s * 1e3, (unsigned long long)mi.leaves[0], (unsigned long long)mi.leaves[1],
               (unsigned long long)mi.leaves[2]);
        printf("memslots: %u used of %u; dirty log: %s%s\n", mi.slots, mi.max_slots,
               mi.manual_protect ? "KVM_GET_DIRTY_LOG + KVM_CLEAR_DIRTY_LOG"
                                 : "KVM_GET_DIRTY_LOG (get-and-clear)",
               mi.dirty_ring ? ", dirty ring offered (unused)" : "");
        printf("guest: long mode at CPL 3, page tables with %s pages; writer: %llu writes over gfn "
               "%#llx-%#llx (%s), seed %llu\n",
               guest_page, (unsigned long long)w.writes, (unsigned long long)w.gfn,
               (unsigned long long)(w.gfn + w.pages - 1),
               hv_fmt_size(w.pages << PAGE_SHIFT, b3, sizeof(b3)), (unsigned long long)w.seed);
        printf("guest exit: %s (KVM exit %u) after %llu writes in %.3f s: %.2f M writes/s "
               "(first touches of host pages included)\n",
               kvm_guest_exit_name(res.exit), res.kvm_exit_reason,
               (unsigned long long)res.writes_done, secs, wps / 1e6);
        printf("verify: %llu words checked in the machine frames the p2m names, %llu differ "
               "from the host replay; checksum %#llx %s\n",
               (unsigned long long)checked, (unsigned long long)bad,
               (unsigned long long)res.checksum, sum_ok ? "matches" : "DIFFERS from the model");
        if (o.log_dirty)
            printf("dirty log: %llu pages harvested, %llu written by the model: %s\n",
                   (unsigned long long)dirty_pages, (unsigned long long)model_pages,
                   dirty_diff == 0 ? "the same pages" : "DIFFERENT pages");
        else
            printf("dirty log: off (--log-dirty harvests it); %llu pages written\n",
                   (unsigned long long)model_pages);
        if (hm_ok)
            printf("host huge pages: %s of %s resident through the mirror is PMD-mapped "
                   "(%.0f%%)%s\n",
                   hv_fmt_size(hm.pmd_mapped_bytes, b1, sizeof(b1)),
                   hv_fmt_size(hm.rss_bytes, b2, sizeof(b2)), pmd_frac * 100,
                   thp_shmem_usable(m->thp) ? ""
                                            : ": shmem THP is off, so the mirror stays 4K "
                                              "whatever the p2m's leaf sizes");
        if (kp_ok && kp[0] + kp[1] + kp[2])
            printf("KVM's mappings: pages_4k %llu pages_2m %llu pages_1g %llu%s\n",
                   (unsigned long long)kp[0], (unsigned long long)kp[1],
                   (unsigned long long)kp[2], o.log_dirty ? " (dirty logging keeps them 4K)" : "");
        else
            printf("KVM's mappings: %s\n", kp_ok ? "none counted (pages_4k/2m/1g all 0)"
                                                 : "not reported by this kernel (no stats fd)");
        if (!o.no_audit)
            printf("audit: %s\n", audit ? hv_audit_last() : "ok (p2m, domain, frames)");
    }
    status = done && sum_ok && bad == 0 && (!o.log_dirty || dirty_diff == 0) && !audit ? 0 : 1;
out:
    kvm_vm_destroy(vm);
    free(rp.v);
    free(rp.pages);
    free(dirty_bm);
    domain_destroy(d);
    machine_destroy(m);
    return status;
}

static struct opt kvm_opts[] = {
    {"guest-mem", OPT_SIZE, &o.guest_mem, "SIZE", "guest RAM (default 256M)", NULL},
    {"host-mem", OPT_SIZE, &o.host_mem, "SIZE", "machine size (default: guest + 25% + 64M, in GiB)", NULL},
    {"writes", OPT_U64, &o.writes, "N", "8-byte writes the guest makes (default 1000000)", NULL},
    {"seed", OPT_U64, &o.seed, "S", "xorshift seed of the guest's writer (default 1)", NULL},
    {"log-dirty", OPT_FLAG, &o.log_dirty, NULL, "KVM dirty logging on; harvest and compare with the model", NULL},
    {"no-audit", OPT_FLAG, &o.no_audit, NULL, "skip the p2m/domain/frame audits", NULL},
    {"json", OPT_FLAG, &o.json, NULL, "machine-readable output", NULL},
    {0},
};

const struct cmd cmd_kvm = {
    .name = "kvm",
    .summary = "run real guest code under /dev/kvm on the p2m mirrored into host mappings",
    .run = run_kvm,
    .opts = kvm_opts,
};
